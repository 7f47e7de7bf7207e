// Built offline by tests/test_swrk.py against Debian's Go packages (/usr/share/gocode).
module pycrestore/gocriuclient

go 1.19

require (
	github.com/checkpoint-restore/go-criu/v5 v5.3.0
	google.golang.org/protobuf v1.28.0
)

replace github.com/checkpoint-restore/go-criu/v5 => /usr/share/gocode/src/github.com/checkpoint-restore/go-criu

replace google.golang.org/protobuf => /usr/share/gocode/src/google.golang.org/protobuf
