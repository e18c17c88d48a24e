// A Go service using libcryptocore through cgo: a small wrapper (Envelope, Seal, Open)
// and a round trip, wrong context and tampering. Run by the ffi tests when `go` is
// installed:
//
//	CGO_CFLAGS="-I$REPO/ffi/include" CGO_LDFLAGS="-L$REPO/target/release -lcryptocore" go run .
//
// The library's last-error message is per OS thread, so each call and its
// cryptocore_last_error run with the goroutine locked to its thread.
package main

/*
#cgo LDFLAGS: -lcryptocore
#include <stdlib.h>
#include "cryptocore.h"
*/
import "C"

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"unsafe"
)

// Error is a failed library call: its status and message.
type Error struct {
	Status  uint32
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("cryptocore status %d: %s", e.Status, e.Message) }

// call runs f on a locked OS thread and turns a failure into an *Error with the thread's
// last-error message.
func call(f func() C.cryptocore_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if st := f(); st != C.CRYPTOCORE_OK {
		return &Error{Status: uint32(st), Message: C.GoString(C.cryptocore_last_error())}
	}
	return nil
}

// Envelope seals and opens messages with data keys wrapped by a local keyring.
type Envelope struct {
	ring *C.cryptocore_keyring
	env  *C.cryptocore_envelope
}

// NewEnvelope makes an in-memory keyring with one key and an envelope over it.
func NewEnvelope(key string) (*Envelope, error) {
	e := &Envelope{}
	ckey := C.CString(key)
	defer C.free(unsafe.Pointer(ckey))
	if err := call(func() C.cryptocore_status { return C.cryptocore_keyring_new(&e.ring) }); err != nil {
		return nil, err
	}
	if err := call(func() C.cryptocore_status { return C.cryptocore_keyring_create_key(e.ring, ckey, nil) }); err != nil {
		e.Close()
		return nil, err
	}
	if err := call(func() C.cryptocore_status { return C.cryptocore_envelope_from_keyring(e.ring, &e.env) }); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// Close frees the handles.
func (e *Envelope) Close() {
	C.cryptocore_envelope_free(e.env)
	C.cryptocore_keyring_free(e.ring)
	e.env, e.ring = nil, nil
}

// context converts a Go map to C pairs; free releases the C strings.
func context(ctx map[string]string) (pairs []C.cryptocore_kv, free func()) {
	var strs []*C.char
	for k, v := range ctx {
		ck, cv := C.CString(k), C.CString(v)
		strs = append(strs, ck, cv)
		pairs = append(pairs, C.cryptocore_kv{key: ck, value: cv})
	}
	return pairs, func() {
		for _, s := range strs {
			C.free(unsafe.Pointer(s))
		}
	}
}

func ptr(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0]))
}

func kvPtr(p []C.cryptocore_kv) *C.cryptocore_kv {
	if len(p) == 0 {
		return nil
	}
	return &p[0]
}

// take copies a library buffer into Go memory and frees (wipes) it.
func take(buf *C.cryptocore_buffer) []byte {
	out := C.GoBytes(unsafe.Pointer(buf.data), C.int(buf.len))
	C.cryptocore_buffer_free(buf)
	return out
}

// Seal encrypts plaintext under key, bound to ctx.
func (e *Envelope) Seal(key string, ctx map[string]string, plaintext []byte) ([]byte, error) {
	pairs, free := context(ctx)
	defer free()
	ckey := C.CString(key)
	defer C.free(unsafe.Pointer(ckey))
	var out C.cryptocore_buffer
	err := call(func() C.cryptocore_status {
		return C.cryptocore_encrypt(e.env, ckey, kvPtr(pairs), C.size_t(len(pairs)), ptr(plaintext),
			C.size_t(len(plaintext)), &out)
	})
	if err != nil {
		return nil, err
	}
	return take(&out), nil
}

// Open decrypts a message sealed with the same context.
func (e *Envelope) Open(ctx map[string]string, ciphertext []byte) ([]byte, error) {
	pairs, free := context(ctx)
	defer free()
	var out C.cryptocore_buffer
	err := call(func() C.cryptocore_status {
		return C.cryptocore_decrypt(e.env, kvPtr(pairs), C.size_t(len(pairs)), ptr(ciphertext),
			C.size_t(len(ciphertext)), &out)
	})
	if err != nil {
		return nil, err
	}
	return take(&out), nil
}

func check(ok bool, what string) {
	if !ok {
		fmt.Fprintln(os.Stderr, "go example: check failed:", what)
		os.Exit(1)
	}
}

func main() {
	env, err := NewEnvelope("tenant-a/go")
	check(err == nil, fmt.Sprint("new envelope: ", err))
	defer env.Close()
	ctx := map[string]string{"tenant": "a", "lang": "go"}
	msg := []byte("sealed from Go")

	sealed, err := env.Seal("tenant-a/go", ctx, msg)
	check(err == nil, fmt.Sprint("seal: ", err))
	opened, err := env.Open(ctx, sealed)
	check(err == nil && bytes.Equal(opened, msg), fmt.Sprint("open: ", err))

	_, err = env.Open(map[string]string{"tenant": "b", "lang": "go"}, sealed)
	e, isErr := err.(*Error)
	check(isErr && e.Status == C.CRYPTOCORE_AUTHENTICATION_FAILED && e.Message != "", fmt.Sprint("wrong context: ", err))

	sealed[len(sealed)-1] ^= 1
	_, err = env.Open(ctx, sealed)
	check(err != nil, "tampered message opened")

	empty, err := env.Seal("tenant-a/go", nil, nil)
	check(err == nil, fmt.Sprint("seal empty: ", err))
	opened, err = env.Open(nil, empty)
	check(err == nil && len(opened) == 0, fmt.Sprint("open empty: ", err))

	fmt.Printf("go example (cryptocore %s): ok\n", C.GoString(C.cryptocore_version()))
}
