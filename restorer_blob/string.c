/*
 * string.c - the four memory functions gcc may call even in freestanding code.
 *
 * gcc emits calls to memcpy, memmove, memset and memcmp for struct copies and large
 * initialisers, whatever -fno-builtin says (gcc manual, "Standards": a freestanding
 * environment must provide them).  The blob links no libc, so it defines them.  The build
 * passes -fno-tree-loop-distribute-patterns so that gcc does not turn these very loops back
 * into calls to themselves.
 */
#include <stddef.h>

void *memcpy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	if (d <= s || d >= s + n)
		return memcpy(dst, src, n);
	/* Overlap with dst above src: copy from the end. */
	while (n--)
		d[n] = s[n];
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	unsigned char *d = dst;

	while (n--)
		*d++ = (unsigned char)c;
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}
