/*
 * The proxy's data path outside Node's event loop: one thread that moves bytes between sockets
 * with epoll, read and write. Measured on the 2-core machine (pgbench -S, c=1): a relay like this
 * costs about half the CPU per round trip of the same relay in Node, where each read is a libuv
 * callback, a Buffer and a JavaScript call (BENCHMARKS.md). The startup phase stays in
 * JavaScript (src/proxy/).
 *
 * Two kinds of pair, both relayed by the same code:
 * - a plain pair (`adopt`): a client socket and its backend socket, handed over after the first
 *   ReadyForQuery. JavaScript has stopped reading them and nothing it wrote is still queued; the
 *   thread works on duplicates of their descriptors.
 * - a TLS pair (`acceptTls`): a client socket that has just been answered `S` to its SSLRequest,
 *   or a direct-TLS client (Postgres 17) whose first bytes JavaScript read and hands over too.
 *   The thread runs the TLS handshake with OpenSSL (the copy inside the node binary, whose
 *   symbols it exports) and the proxy's one certificate (`*.<domain>`, whatever server name the
 *   client sends: a name never makes key material). Then the thread makes a socketpair: the
 *   pair relays TLS on the client side to plaintext on one end, and JavaScript gets the other end
 *   as an ordinary socket, on which the startup phase runs unchanged and which it later hands
 *   over as the client of a plain pair.
 *
 * Per direction at most one read's worth of bytes waits for a slow receiver, and the sender is
 * not read meanwhile: backpressure is TCP's own. A pair ends when both directions have seen
 * end-of-file (each forwarded as a shutdown; on TLS a close_notify first), on any socket or TLS
 * error, on a failed system call, or when JavaScript aborts it (it closed its own socket); then
 * the thread closes its descriptors and tells JavaScript, which closes its own.
 *
 * Bounds: pairs are bounded by the proxy's connection limit (it hands over no more than it
 * accepts); one read is at most READ_BYTES_MAX; reads of what OpenSSL already holds are bounded
 * by TLS_PENDING_READS_MAX per event; the wait is epoll's, woken by an eventfd for commands.
 *
 * The files, each with one reason to change:
 * - relay_pairs.c: a pair's I/O (read, write, pending bytes, shutdown, close, the switch of a TLS
 *   pair to its backend);
 * - relay_thread.c: the thread (epoll loop, pairs handed over, the command queue, stop);
 * - relay_tls.c: TLS (the context, handshake, ALPN, the replay of a direct-TLS ClientHello);
 * - relay_napi.c: the binding to JavaScript (argument checks, events, failures thrown as JS errors).
 * Only relay_napi.c includes node_api.h.
 */
#ifndef CELLAR_RELAY_H
#define CELLAR_RELAY_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define READ_BYTES_MAX 65536
#define EVENTS_MAX 256
#define TLS_PENDING_READS_MAX 64
#define CERTIFICATE_CHAIN_MAX 8
/* In flight at a TLS pair's switch: a socketpair's buffers and two pending reads, with room. */
#define SWITCH_BYTES_MAX (4 * 1024 * 1024)
#define SERVER_NAME_BYTES_MAX 256
#define CLIENT 0
#define BACKEND 1

/* What JavaScript is told; the numbers are part of the binding's interface (native-relay.ts). */
enum { EVENT_CLOSED = 0, EVENT_TLS_READY = 1 };

/* PHASE_REFUSED: shut for writing, reading until the client closes (so it sees a clean close, not a reset). */
typedef enum { PHASE_RELAY, PHASE_HANDSHAKE, PHASE_REFUSED } phase_t;

typedef struct pair pair_t;

/* What an epoll event points at: one socket of a pair. */
typedef struct {
  pair_t *pair;
  int side;
} endpoint_t;

struct pair {
  uint32_t id;
  /* Owned by the thread: fd[CLIENT], fd[BACKEND] (-1 while a TLS pair is in its handshake). */
  int fd[2];
  endpoint_t endpoint[2];
  /* The client side's TLS session (TLS pairs only). */
  SSL *ssl;
  phase_t phase;
  /* What the handshake waits for on the client socket (EPOLLIN or EPOLLOUT). */
  uint32_t handshakeWants;
  /* SSL_read needs the client socket writable (a TLS message it must answer). */
  bool readWantsWrite;
  /* Direct TLS (Postgres 17): ALPN `postgresql` is required, as Postgres requires it. */
  bool alpnRequired;
  /* Bytes read from fd[side] that fd[1 - side] has not taken yet (a partial write). */
  char *pending[2];
  size_t pendingOffset[2];
  size_t pendingLength[2];
  /* fd[side] has reached end-of-file (and fd[1 - side] was shut for writing). */
  bool eof[2];
  bool closed;
  uint32_t interest[2];
  /* Bytes read from fd[side] since JavaScript last took them; [CLIENT] is "in", [BACKEND] "out". */
  _Atomic uint64_t bytes[2];
  /* The live list (all pairs the thread serves), changed under relay.lock. */
  pair_t *next;
  pair_t *prev;
};

/* A request from JavaScript about a live pair. */
typedef struct command {
  enum { COMMAND_ABORT, COMMAND_SWITCH } kind;
  uint32_t id;
  /* COMMAND_SWITCH: duplicates of JavaScript's end of the socketpair and of the backend socket. */
  int plainFd;
  int backendFd;
  struct command *next;
} command_t;

/* The relay's process-wide state (defined in relay_thread.c). */
typedef struct {
  bool running;
  int epoll;
  int wake;
  pthread_t thread;
  pthread_mutex_t lock;
  /* Under lock: pairs not yet registered with epoll, the live list, commands, the stop request. */
  pair_t *incoming;
  pair_t *live;
  command_t *commands;
  bool stopping;
  uint32_t nextId;
  /* Relay thread only: pairs closed during this batch of events, freed after it (a later event may still point at one). */
  pair_t *ended;
} relay_t;

extern relay_t relay;

/* relay_pairs.c: a pair's I/O, on the relay thread (newPair, freeUnqueuedPair and duplicateNonBlocking on JavaScript's). */
/* A pair over duplicates of the descriptors (backend -1 for a TLS pair); NULL with *error set (an errno). */
pair_t *newPair(int clientFd, int backendFd, int *error);
/* Undoes newPair for a pair the thread never got. */
void freeUnqueuedPair(pair_t *p);
/* A duplicate of `fd` that never blocks, or -1 (errno set). */
int duplicateNonBlocking(int fd);
uint32_t wantedEvents(const pair_t *p, int side);
/* Sets epoll's interest to what the pair waits for; a failed epoll_ctl ends the pair (callers check p->closed). */
void updateInterest(pair_t *p);
/* Registers the pair's sockets with epoll; false (the pair ended) if the kernel refuses. */
bool registerPair(pair_t *p);
void closePair(pair_t *p);
void freeEnded(void);
void forward(pair_t *p, int side);
void onPairEvent(endpoint_t *endpoint, uint32_t events);
void switchToBackend(pair_t *p, int plainFd, int backendFd);

/* relay_thread.c: the thread and what JavaScript hands it. */
/* NULL, or why the thread could not start. */
const char *startThread(void);
/* Ends every pair and the thread; NULL, or why the thread could not be joined (then nothing is freed). */
const char *stopThread(void);
/* Hands a new pair to the thread and returns its id; from here the pair is the thread's. */
uint32_t queuePair(pair_t *p);
/* A command for pair `id`, owning nothing yet; NULL when out of memory. */
command_t *newCommand(int kind, uint32_t id);
/* Frees a command and the descriptors a switch did not take. */
void freeCommand(command_t *command);
void queueCommand(command_t *command);
/*
 * Calls `visit` with what each live pair relayed since the last call (pairs that moved nothing
 * are skipped); false as soon as `visit` is (the bytes of that pair and later ones stay counted).
 */
bool takeBytes(bool (*visit)(uint32_t id, uint64_t bytesIn, uint64_t bytesOut, void *context), void *context);

/* relay_tls.c */
/* NULL, or why the certificate and key cannot serve (then the previous context stays). */
const char *configureTlsContext(const char *certificatePem, const char *keyPem);
bool tlsConfigured(void);
/* A TLS session on the pair's client socket, in the accept state; `early` is what JavaScript read of a direct-TLS ClientHello (then ALPN is required). */
bool attachTls(pair_t *p, const char *early, size_t earlyLength);
/* Runs the handshake as far as the socket lets it; at its end the pair gets its socketpair. */
void handshake(pair_t *p);

/* relay_napi.c: tells JavaScript; false if the event could not be queued. */
bool emit(int kind, pair_t *p, int fd, const char *name);

#endif
