// wcfs native addon — shared declarations.
//
// The addon is deliberately thin (see notes.md "FUSE layer" and Decisions D2): it takes and returns
// primitives, buffers and return codes; validation and logic live in TypeScript. The single
// TS module that imports it is src/native.ts.
#pragma once
#include <napi.h>

namespace wcfs {

// Throws a JS Error whose .code is the errno name (e.g. "EAGAIN"; "E<n>" for a number TS did
// not name, see addon.cc setErrnoNames) and .errno the negative number, the same shape
// Node's own fs errors have.
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall);

void InitFlock(Napi::Env env, Napi::Object exports);
void InitFileMap(Napi::Env env, Napi::Object exports);
void InitPidfd(Napi::Env env, Napi::Object exports);      // pidfd.cc
void InitFuse(Napi::Env env, Napi::Object exports);       // fuse.cc
void InitMincore(Napi::Env env, Napi::Object exports);    // mincore.cc
void InitFs1Scan(Napi::Env env, Napi::Object exports);    // fs1scan.cc: FileStorage index-rebuild scanner
void InitFs1Views(Napi::Env env, Napi::Object exports);   // fs1views.cc: batched data-record lookups
void InitZData(Napi::Env env, Napi::Object exports);      // zdata.cc: ZBlk1 chunk assembly
void InitClient(Napi::Env env, Napi::Object exports);     // client.cc (+ client_mmap.cc, client_wlink.cc)
void InitTestHooks(Napi::Env env, Napi::Object exports);  // test_hooks.cc: test-only entry points

}  // namespace wcfs
