// A restore through go-criu (Debian's golang-github-checkpoint-restore-go-criu-dev), the
// library runc and podman use: it starts `<criu path> swrk <fd>` and speaks CRIU's RPC.
// Usage: gocriu_restore CRIU_PATH IMAGES_DIR WORK_DIR. Prints one line per notification,
// then "restored PID" (or "error ..." and exit 1). tests/test_swrk.py builds and runs it.
package main

import (
	"fmt"
	"os"

	criu "github.com/checkpoint-restore/go-criu/v5"
	"github.com/checkpoint-restore/go-criu/v5/rpc"
	"google.golang.org/protobuf/proto"
)

type notes struct {
	criu.NoNotify
	root int32
}

func (n *notes) PreRestore() error { fmt.Println("notify pre-restore"); return nil }
func (n *notes) SetupNamespaces(pid int32) error {
	fmt.Printf("notify setup-namespaces %d\n", pid)
	return nil
}
func (n *notes) PostSetupNamespaces() error { fmt.Println("notify post-setup-namespaces"); return nil }
func (n *notes) PostRestore(pid int32) error {
	fmt.Printf("notify post-restore %d\n", pid)
	n.root = pid
	return nil
}
func (n *notes) NetworkUnlock() error { fmt.Println("notify network-unlock"); return nil }
func (n *notes) PostResume() error   { fmt.Println("notify post-resume"); return nil }

func main() {
	c := criu.MakeCriu()
	c.SetCriuPath(os.Args[1])
	version, err := c.GetCriuVersion()
	if err != nil {
		fmt.Println("error version:", err)
		os.Exit(1)
	}
	fmt.Printf("version %d\n", version)
	dir, err := os.Open(os.Args[2])
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	work, err := os.Open(os.Args[3])
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	opts := &rpc.CriuOpts{
		ImagesDirFd: proto.Int32(int32(dir.Fd())),
		WorkDirFd:   proto.Int32(int32(work.Fd())),
		LogLevel:    proto.Int32(4),
		LogFile:     proto.String("restore.log"),
		RstSibling:  proto.Bool(true),
	}
	n := &notes{}
	if err := c.Restore(opts, n); err != nil {
		fmt.Println("error restore:", err)
		os.Exit(1)
	}
	fmt.Printf("restored %d\n", n.root)
}
