{
  "targets": [
    {
      "target_name": "wcfs_native",
      "sources": [
        "native/addon.cc",
        "native/flock.cc",
        "native/filemap.cc",
        "native/pidfd.cc",
        "native/fuse.cc",
        "native/mincore.cc",
        "native/fs1scan.cc",
        "native/fs1views.cc",
        "native/zdata.cc",
        "native/client.cc",
        "native/client_mmap.cc",
        "native/client_wlink.cc",
        "native/test_hooks.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)"]
    }
  ]
}
