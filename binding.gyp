{
  "targets": [
    {
      "target_name": "relay",
      "sources": ["native/relay.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"],
      "libraries": ["-lpthread"]
    }
  ]
}
