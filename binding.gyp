{
  "targets": [
    {
      "target_name": "relay",
      "sources": ["native/relay_pairs.c", "native/relay_thread.c", "native/relay_tls.c", "native/relay_napi.c"],
      # Hidden: the relay's own names (emit, forward, relay, ...) are split over several files, so
      # they are not static, and must never bind to a symbol the node binary exports.
      "cflags": ["-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror", "-std=gnu11"],
      "libraries": ["-lpthread"]
    }
  ]
}
