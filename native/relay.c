/*
 * The proxy's data path outside Node's event loop: one thread that moves bytes between sockets
 * with epoll, read and write. Measured on the 2-core machine (pgbench -S, c=1): a relay like this
 * costs about half the CPU per round trip of the same relay in Node, where each read is a libuv
 * callback, a Buffer and a JavaScript call (BENCHMARKS.md). The startup phase stays in
 * JavaScript (src/proxy/server.ts).
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
 * error, or when JavaScript aborts it (it closed its own socket); then the thread closes its
 * descriptors and tells JavaScript, which closes its own.
 *
 * Bounds: pairs are bounded by the proxy's connection limit (it hands over no more than it
 * accepts); one read is at most READ_BYTES_MAX; reads of what OpenSSL already holds are bounded
 * by TLS_PENDING_READS_MAX per event; the wait is epoll's, woken by an eventfd for commands.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

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
  /* Owned by this thread: fd[CLIENT], fd[BACKEND] (-1 while a TLS pair is in its handshake). */
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

/* An event on its way to JavaScript. */
typedef struct {
  int kind;
  uint32_t id;
  uint64_t bytesIn;
  uint64_t bytesOut;
  int fd;
  char name[SERVER_NAME_BYTES_MAX];
} event_t;

static struct {
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
  napi_threadsafe_function onEvent;
  /*
   * The certificate and settings for TLS pairs; replaced by configureTls when the certificate is
   * renewed. Read and replaced on JavaScript's thread only (SSL_new takes its own reference).
   */
  SSL_CTX *tls;
  /* Relay thread only: pairs closed during this batch of events, freed after it (a later event may still point at one). */
  pair_t *ended;
} relay = {.lock = PTHREAD_MUTEX_INITIALIZER, .epoll = -1, .wake = -1};

/* ALPN wire format: length, then `postgresql`. */
static const unsigned char alpnPostgres[] = {10, 'p', 'o', 's', 't', 'g', 'r', 'e', 's', 'q', 'l'};

/*
 * Direct TLS: the client's first bytes were read by JavaScript (to see that it is TLS); this read
 * BIO gives them to OpenSSL before what the socket has.
 */
typedef struct {
  int fd;
  char *early;
  size_t earlyLength;
  size_t earlyOffset;
} replay_t;

static BIO_METHOD *replayMethod;

/* The eventfd's epoll data: not an endpoint. */
static int wakeMarker;

static char readBuffer[READ_BYTES_MAX];

/* Hands an event to JavaScript; false if it could not be queued. */
static bool emit(int kind, pair_t *p, int fd, const char *name) {
  event_t *event = calloc(1, sizeof *event);
  if (event == NULL) return false;
  event->kind = kind;
  event->id = p->id;
  event->fd = fd;
  if (name != NULL) strncpy(event->name, name, SERVER_NAME_BYTES_MAX - 1);
  if (kind == EVENT_CLOSED) {
    event->bytesIn = atomic_exchange(&p->bytes[CLIENT], 0);
    event->bytesOut = atomic_exchange(&p->bytes[BACKEND], 0);
  }
  if (napi_call_threadsafe_function(relay.onEvent, event, napi_tsfn_nonblocking) != napi_ok) {
    free(event);
    return false;
  }
  return true;
}

static uint32_t wantedEvents(const pair_t *p, int side) {
  if (p->fd[side] < 0) return 0;
  if (p->phase != PHASE_RELAY) return side == CLIENT ? p->handshakeWants : 0;
  uint32_t events = 0;
  if (!p->eof[side] && p->pendingLength[side] == 0) events |= EPOLLIN;
  if (p->pendingLength[1 - side] > 0) events |= EPOLLOUT;
  if (side == CLIENT && p->readWantsWrite) events |= EPOLLOUT;
  return events;
}

static void updateInterest(pair_t *p) {
  for (int side = 0; side < 2; side++) {
    uint32_t events = wantedEvents(p, side);
    if (p->fd[side] < 0 || events == p->interest[side]) continue;
    struct epoll_event event = {.events = events, .data.ptr = &p->endpoint[side]};
    epoll_ctl(relay.epoll, EPOLL_CTL_MOD, p->fd[side], &event);
    p->interest[side] = events;
  }
}

static void closePair(pair_t *p) {
  if (p->closed) return;
  p->closed = true;
  if (p->ssl != NULL) SSL_free(p->ssl);
  p->ssl = NULL;
  for (int side = 0; side < 2; side++) {
    if (p->fd[side] >= 0) {
      epoll_ctl(relay.epoll, EPOLL_CTL_DEL, p->fd[side], NULL);
      close(p->fd[side]);
      p->fd[side] = -1;
    }
    free(p->pending[side]);
    p->pending[side] = NULL;
  }
  pthread_mutex_lock(&relay.lock);
  if (p->prev != NULL) p->prev->next = p->next;
  else relay.live = p->next;
  if (p->next != NULL) p->next->prev = p->prev;
  pthread_mutex_unlock(&relay.lock);
  emit(EVENT_CLOSED, p, -1, NULL);
  p->next = relay.ended;
  relay.ended = p;
}

static void freeEnded(void) {
  while (relay.ended != NULL) {
    pair_t *p = relay.ended;
    relay.ended = p->next;
    free(p);
  }
}

/* Writes what it can without blocking: the count written, or -1 on a socket error. */
static ssize_t writeSome(int fd, const char *data, size_t length) {
  size_t written = 0;
  while (written < length) {
    // MSG_NOSIGNAL: a peer that has gone is an EPIPE for this pair, not a SIGPIPE for the process.
    ssize_t n = send(fd, data + written, length - written, MSG_NOSIGNAL);
    if (n > 0) {
      written += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return -1;
  }
  return (ssize_t)written;
}

/* Writes to fd[side] without blocking, through TLS on a TLS client: the count written, or -1. */
static ssize_t writeSide(pair_t *p, int side, const char *data, size_t length) {
  if (side != CLIENT || p->ssl == NULL) return writeSome(p->fd[side], data, length);
  size_t written = 0;
  while (written < length) {
    ERR_clear_error();
    // A retry after WANT_WRITE passes the same bytes again (from the pending buffer), as OpenSSL requires.
    int n = SSL_write(p->ssl, data + written, (int)(length - written));
    if (n > 0) {
      written += (size_t)n;
      continue;
    }
    if (SSL_get_error(p->ssl, n) == SSL_ERROR_WANT_WRITE) break;
    return -1;
  }
  return (ssize_t)written;
}

/* Reads fd[side], through TLS on a TLS client: > 0 bytes, 0 end-of-file, -1 nothing now, -2 error. */
static ssize_t readSide(pair_t *p, int side) {
  if (side != CLIENT || p->ssl == NULL) {
    ssize_t n = read(p->fd[side], readBuffer, READ_BYTES_MAX);
    if (n >= 0) return n;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -1 : -2;
  }
  ERR_clear_error();
  int n = SSL_read(p->ssl, readBuffer, READ_BYTES_MAX);
  if (n > 0) return n;
  switch (SSL_get_error(p->ssl, n)) {
    case SSL_ERROR_WANT_READ:
      return -1;
    case SSL_ERROR_WANT_WRITE:
      p->readWantsWrite = true;
      return -1;
    case SSL_ERROR_ZERO_RETURN:
      return 0;
    default:
      return -2;
  }
}

/* fd[side] has nothing more to send: shut the other socket for writing (TLS: close_notify first). */
static void shutdownWrite(pair_t *p, int side) {
  if (side == CLIENT && p->ssl != NULL) {
    ERR_clear_error();
    SSL_shutdown(p->ssl);
  }
  shutdown(p->fd[side], SHUT_WR);
}

/* Reads fd[side] and forwards to the other socket; what it cannot take waits in pending. */
static void forward(pair_t *p, int side) {
  // A TLS session may hold decrypted bytes no socket event will announce: read until it holds none.
  for (int reads = 0; reads < TLS_PENDING_READS_MAX; reads++) {
    if (p->closed || p->eof[side] || p->pendingLength[side] > 0) return;
    ssize_t n = readSide(p, side);
    if (n == -1) return updateInterest(p);
    if (n == -2) return closePair(p);
    if (n == 0) {
      p->eof[side] = true;
      shutdownWrite(p, 1 - side);
      if (p->eof[1 - side]) return closePair(p);
      return updateInterest(p);
    }
    atomic_fetch_add(&p->bytes[side], (uint64_t)n);
    ssize_t written = writeSide(p, 1 - side, readBuffer, (size_t)n);
    if (written < 0) return closePair(p);
    if (written < n) {
      size_t rest = (size_t)(n - written);
      p->pending[side] = malloc(rest);
      if (p->pending[side] == NULL) return closePair(p);
      memcpy(p->pending[side], readBuffer + written, rest);
      p->pendingOffset[side] = 0;
      p->pendingLength[side] = rest;
      return updateInterest(p);
    }
    if (side != CLIENT || p->ssl == NULL || !SSL_has_pending(p->ssl)) return;
  }
}

/* fd[1 - side] can take more: writes what fd[side] left pending. */
static void flush(pair_t *p, int side) {
  if (p->pendingLength[side] == 0) return;
  size_t left = p->pendingLength[side] - p->pendingOffset[side];
  ssize_t written = writeSide(p, 1 - side, p->pending[side] + p->pendingOffset[side], left);
  if (written < 0) return closePair(p);
  p->pendingOffset[side] += (size_t)written;
  if (p->pendingOffset[side] < p->pendingLength[side]) return;
  free(p->pending[side]);
  p->pending[side] = NULL;
  p->pendingOffset[side] = 0;
  p->pendingLength[side] = 0;
  updateInterest(p);
  // Reading fd[side] was paused; on TLS the next bytes may already be decrypted, with no event to come.
  if (side == CLIENT && p->ssl != NULL && SSL_has_pending(p->ssl)) forward(p, CLIENT);
}

/* The handshake is done: plaintext goes to one end of a socketpair, JavaScript gets the other. */
static void tlsReady(pair_t *p) {
  if (p->alpnRequired) {
    const unsigned char *protocol;
    unsigned int length;
    SSL_get0_alpn_selected(p->ssl, &protocol, &length);
    if (length != sizeof alpnPostgres - 1 || memcmp(protocol, alpnPostgres + 1, length) != 0) {
      // As Postgres does: a direct-TLS client that did not negotiate `postgresql` is closed unanswered.
      ERR_clear_error();
      SSL_shutdown(p->ssl);
      shutdown(p->fd[CLIENT], SHUT_WR);
      p->phase = PHASE_REFUSED;
      p->handshakeWants = EPOLLIN;
      return updateInterest(p);
    }
  }
  int ends[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, ends) != 0) return closePair(p);
  p->fd[BACKEND] = ends[0];
  p->phase = PHASE_RELAY;
  p->interest[BACKEND] = wantedEvents(p, BACKEND);
  struct epoll_event event = {.events = p->interest[BACKEND], .data.ptr = &p->endpoint[BACKEND]};
  if (epoll_ctl(relay.epoll, EPOLL_CTL_ADD, ends[0], &event) != 0) {
    close(ends[1]);
    return closePair(p);
  }
  const char *name = SSL_get_servername(p->ssl, TLSEXT_NAMETYPE_host_name);
  if (!emit(EVENT_TLS_READY, p, ends[1], name)) {
    close(ends[1]);
    return closePair(p);
  }
  updateInterest(p);
  // The client may have sent its startup packet in the same flight as its Finished.
  if (SSL_has_pending(p->ssl)) forward(p, CLIENT);
}

static void handshake(pair_t *p) {
  ERR_clear_error();
  int result = SSL_do_handshake(p->ssl);
  if (result == 1) return tlsReady(p);
  switch (SSL_get_error(p->ssl, result)) {
    case SSL_ERROR_WANT_READ:
      p->handshakeWants = EPOLLIN;
      break;
    case SSL_ERROR_WANT_WRITE:
      p->handshakeWants = EPOLLOUT;
      break;
    default:
      return closePair(p);
  }
  updateInterest(p);
}

/* ALPN: `postgresql` when the client offers it (Postgres 17), else none. */
static int onAlpn(SSL *ssl, const unsigned char **out, unsigned char *outLength, const unsigned char *in, unsigned int inLength, void *unused) {
  (void)ssl;
  (void)unused;
  unsigned char *selected;
  if (SSL_select_next_proto(&selected, outLength, alpnPostgres, sizeof alpnPostgres, in, inLength) != OPENSSL_NPN_NEGOTIATED) return SSL_TLSEXT_ERR_NOACK;
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

static void onEvent(endpoint_t *endpoint, uint32_t events) {
  pair_t *p = endpoint->pair;
  int side = endpoint->side;
  if (p->closed) return;
  if (events & EPOLLERR) return closePair(p);
  if (p->phase == PHASE_HANDSHAKE) return handshake(p);
  if (p->phase == PHASE_REFUSED) {
    // Discards what the client still sends; its close (or the proxy's startup deadline) ends the pair.
    ssize_t n = read(p->fd[CLIENT], readBuffer, READ_BYTES_MAX);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) closePair(p);
    return;
  }
  if (events & EPOLLOUT) {
    flush(p, 1 - side);
    if (!p->closed && side == CLIENT && p->readWantsWrite) {
      p->readWantsWrite = false;
      forward(p, CLIENT);
    }
  }
  if (p->closed) return;
  if (events & (EPOLLIN | EPOLLHUP)) {
    // A hang-up with nothing left to read in either direction would repeat forever: end the pair.
    if ((events & EPOLLHUP) && (p->eof[side] || p->pendingLength[side] > 0)) return closePair(p);
    forward(p, side);
  }
}

static pair_t *findLive(uint32_t id) {
  // Only the relay thread changes the list, and this runs on it: no lock needed to read.
  for (pair_t *p = relay.live; p != NULL; p = p->next) {
    if (p->id == id) return p;
  }
  return NULL;
}

/* Reads everything `fd` holds now onto the end of `*buffer` (bounded); false on an error or past the bound. */
static bool drainInto(int fd, char **buffer, size_t *length) {
  for (;;) {
    ssize_t n = read(fd, readBuffer, READ_BYTES_MAX);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
    if (n == 0) return true;
    if (*length + (size_t)n > SWITCH_BYTES_MAX) return false;
    char *grown = realloc(*buffer, *length + (size_t)n);
    if (grown == NULL) return false;
    memcpy(grown + *length, readBuffer, (size_t)n);
    *buffer = grown;
    *length += (size_t)n;
  }
}

/*
 * A TLS pair past its startup: its plaintext side moves from the socketpair to the backend, so
 * the bytes no longer pass through JavaScript's socket and back. What is in flight keeps its
 * order: bytes JavaScript wrote for the client (still in the socketpair, or pending) go out
 * first; bytes of the client that JavaScript had not read go to the backend before newer ones.
 */
static void switchToBackend(pair_t *p, int plainFd, int backendFd) {
  bool ok = p->phase == PHASE_RELAY && !p->eof[CLIENT] && !p->eof[BACKEND];
  // To the client: what was pending from the socketpair, then what is still in it.
  char *toClient = NULL;
  size_t toClientLength = 0;
  if (ok && p->pendingLength[BACKEND] > 0) {
    toClientLength = p->pendingLength[BACKEND] - p->pendingOffset[BACKEND];
    toClient = malloc(toClientLength);
    ok = toClient != NULL;
    if (ok) memcpy(toClient, p->pending[BACKEND] + p->pendingOffset[BACKEND], toClientLength);
  }
  ok = ok && drainInto(p->fd[BACKEND], &toClient, &toClientLength);
  // To the backend: what JavaScript left unread in its end, then what was pending for the socketpair.
  char *toBackend = NULL;
  size_t toBackendLength = 0;
  ok = ok && drainInto(plainFd, &toBackend, &toBackendLength);
  if (ok && p->pendingLength[CLIENT] > 0) {
    size_t rest = p->pendingLength[CLIENT] - p->pendingOffset[CLIENT];
    char *grown = realloc(toBackend, toBackendLength + rest);
    ok = grown != NULL;
    if (ok) {
      memcpy(grown + toBackendLength, p->pending[CLIENT] + p->pendingOffset[CLIENT], rest);
      toBackend = grown;
      toBackendLength += rest;
    }
  }
  close(plainFd);
  if (!ok) {
    free(toClient);
    free(toBackend);
    close(backendFd);
    return closePair(p);
  }
  epoll_ctl(relay.epoll, EPOLL_CTL_DEL, p->fd[BACKEND], NULL);
  close(p->fd[BACKEND]);
  p->fd[BACKEND] = backendFd;
  // Counted from here on, like a plain pair: the startup phase is not "relayed bytes".
  atomic_store(&p->bytes[CLIENT], 0);
  atomic_store(&p->bytes[BACKEND], 0);
  for (int side = 0; side < 2; side++) {
    free(p->pending[side]);
    p->pending[side] = NULL;
    p->pendingOffset[side] = 0;
    p->pendingLength[side] = 0;
  }
  // pending[side] holds bytes read from fd[side]: toClient came from the plaintext side, toBackend from the client.
  p->pending[BACKEND] = toClient;
  p->pendingLength[BACKEND] = toClientLength;
  p->pending[CLIENT] = toBackend;
  p->pendingLength[CLIENT] = toBackendLength;
  p->interest[BACKEND] = 0;
  struct epoll_event event = {.events = 0, .data.ptr = &p->endpoint[BACKEND]};
  if (epoll_ctl(relay.epoll, EPOLL_CTL_ADD, backendFd, &event) != 0) return closePair(p);
  updateInterest(p);
  flush(p, BACKEND);
  if (!p->closed) flush(p, CLIENT);
}

/* Frees a command and the descriptors a switch did not take. */
static void freeCommand(command_t *command) {
  if (command->plainFd >= 0) close(command->plainFd);
  if (command->backendFd >= 0) close(command->backendFd);
  free(command);
}

static void runCommand(command_t *command) {
  pair_t *p = findLive(command->id);
  if (command->kind == COMMAND_ABORT) {
    if (p != NULL) closePair(p);
  } else if (command->kind == COMMAND_SWITCH && p != NULL) {
    // switchToBackend owns both descriptors from here.
    switchToBackend(p, command->plainFd, command->backendFd);
    command->plainFd = command->backendFd = -1;
  }
  freeCommand(command);
}

/* Registers new pairs and runs commands; returns false when asked to stop. */
static bool takeWork(void) {
  uint64_t count;
  if (read(relay.wake, &count, sizeof count) < 0 && errno != EAGAIN) return true;
  pthread_mutex_lock(&relay.lock);
  pair_t *incoming = relay.incoming;
  relay.incoming = NULL;
  command_t *commands = relay.commands;
  relay.commands = NULL;
  bool stopping = relay.stopping;
  pthread_mutex_unlock(&relay.lock);
  while (incoming != NULL) {
    pair_t *p = incoming;
    incoming = p->next;
    pthread_mutex_lock(&relay.lock);
    p->prev = NULL;
    p->next = relay.live;
    if (relay.live != NULL) relay.live->prev = p;
    relay.live = p;
    pthread_mutex_unlock(&relay.lock);
    for (int side = 0; side < 2; side++) {
      if (p->fd[side] < 0) continue;
      p->interest[side] = wantedEvents(p, side);
      struct epoll_event event = {.events = p->interest[side], .data.ptr = &p->endpoint[side]};
      if (epoll_ctl(relay.epoll, EPOLL_CTL_ADD, p->fd[side], &event) != 0) {
        closePair(p);
        break;
      }
    }
    // A direct-TLS ClientHello was read before the handover: no socket event will announce it.
    if (!p->closed && p->phase == PHASE_HANDSHAKE) handshake(p);
  }
  // Commands in the order JavaScript sent them (the list was built newest first).
  command_t *ordered = NULL;
  while (commands != NULL) {
    command_t *next = commands->next;
    commands->next = ordered;
    ordered = commands;
    commands = next;
  }
  while (ordered != NULL) {
    command_t *command = ordered;
    ordered = command->next;
    runCommand(command);
  }
  return !stopping;
}

static void *run(void *unused) {
  (void)unused;
  struct epoll_event events[EVENTS_MAX];
  bool running = true;
  while (running) {
    int count = epoll_wait(relay.epoll, events, EVENTS_MAX, -1);
    if (count < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < count; i++) {
      if (events[i].data.ptr == &wakeMarker) running = takeWork();
      else onEvent(events[i].data.ptr, events[i].events);
    }
    freeEnded();
  }
  // Stopping: every pair ends (its descriptors closed, JavaScript told), then the thread exits.
  for (;;) {
    pthread_mutex_lock(&relay.lock);
    pair_t *p = relay.live != NULL ? relay.live : relay.incoming;
    if (p != NULL && p == relay.incoming) {
      relay.incoming = p->next;
      p->prev = NULL;
      p->next = relay.live;
      relay.live = p;
    }
    pthread_mutex_unlock(&relay.lock);
    if (p == NULL) break;
    closePair(p);
  }
  freeEnded();
  return NULL;
}

static void callEvent(napi_env env, napi_value callback, void *context, void *data) {
  (void)context;
  event_t *event = data;
  if (env != NULL && callback != NULL) {
    napi_value args[6], undefined;
    napi_create_int32(env, event->kind, &args[0]);
    napi_create_uint32(env, event->id, &args[1]);
    napi_create_double(env, (double)event->bytesIn, &args[2]);
    napi_create_double(env, (double)event->bytesOut, &args[3]);
    napi_create_int32(env, event->fd, &args[4]);
    napi_create_string_utf8(env, event->name, NAPI_AUTO_LENGTH, &args[5]);
    napi_get_undefined(env, &undefined);
    napi_call_function(env, undefined, callback, 6, args, NULL);
  } else if (event->fd >= 0) {
    close(event->fd);
  }
  free(event);
}

static napi_value throwError(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

static void wakeThread(void) {
  uint64_t one = 1;
  // An eventfd write fails only when its counter is full, and then the thread is awake anyway.
  (void)!write(relay.wake, &one, sizeof one);
}

/* A string argument into a malloc'ed buffer (NULL for null/undefined or on error). */
static char *stringArgument(napi_env env, napi_value value) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_string) return NULL;
  size_t length;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &length) != napi_ok) return NULL;
  char *text = malloc(length + 1);
  if (text == NULL) return NULL;
  if (napi_get_value_string_utf8(env, value, text, length + 1, &length) != napi_ok) {
    free(text);
    return NULL;
  }
  return text;
}

/* Parses PEM text into a certificate, its chain and a key; false if any part is missing or bad. */
static bool parseKeyPair(const char *certificatePem, const char *keyPem, X509 **certificate, STACK_OF(X509) **chain, EVP_PKEY **key) {
  *certificate = NULL;
  *chain = NULL;
  *key = NULL;
  BIO *bio = BIO_new_mem_buf(certificatePem, -1);
  if (bio == NULL) return false;
  *certificate = PEM_read_bio_X509(bio, NULL, NULL, NULL);
  for (int i = 0; *certificate != NULL && i < CERTIFICATE_CHAIN_MAX; i++) {
    X509 *extra = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (extra == NULL) break;
    if (*chain == NULL) *chain = sk_X509_new_null();
    if (*chain == NULL || sk_X509_push(*chain, extra) == 0) X509_free(extra);
  }
  BIO_free(bio);
  ERR_clear_error();
  bio = BIO_new_mem_buf(keyPem, -1);
  if (bio != NULL) {
    *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
  }
  ERR_clear_error();
  if (*certificate != NULL && *key != NULL) return true;
  X509_free(*certificate);
  EVP_PKEY_free(*key);
  if (*chain != NULL) sk_X509_pop_free(*chain, X509_free);
  *certificate = NULL;
  *chain = NULL;
  *key = NULL;
  return false;
}

/* start(onEvent(kind, id, bytesIn, bytesOut, fd, name)): starts the relay thread. */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (relay.running) return throwError(env, "the relay is already running");
  if (argc < 1) return throwError(env, "start needs an onEvent callback");
  napi_create_string_utf8(env, "cellar relay events", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, callEvent, &relay.onEvent) != napi_ok) {
    return throwError(env, "could not create the relay's callback");
  }
  // The proxy's servers keep the process alive, not the relay.
  napi_unref_threadsafe_function(env, relay.onEvent);
  relay.epoll = epoll_create1(EPOLL_CLOEXEC);
  relay.wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct epoll_event event = {.events = EPOLLIN, .data.ptr = &wakeMarker};
  if (relay.epoll < 0 || relay.wake < 0 || epoll_ctl(relay.epoll, EPOLL_CTL_ADD, relay.wake, &event) != 0) {
    return throwError(env, strerror(errno));
  }
  relay.stopping = false;
  if (pthread_create(&relay.thread, NULL, run, NULL) != 0) return throwError(env, "could not start the relay thread");
  relay.running = true;
  return NULL;
}

static int replayRead(BIO *bio, char *out, int size) {
  replay_t *replay = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (replay == NULL || size <= 0) return 0;
  if (replay->earlyOffset < replay->earlyLength) {
    size_t count = replay->earlyLength - replay->earlyOffset;
    if (count > (size_t)size) count = (size_t)size;
    memcpy(out, replay->early + replay->earlyOffset, count);
    replay->earlyOffset += count;
    return (int)count;
  }
  ssize_t n = read(replay->fd, out, (size_t)size);
  if (n >= 0) return (int)n;
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_read(bio);
  return -1;
}

static long replayControl(BIO *bio, int command, long number, void *pointer) {
  (void)bio;
  (void)number;
  (void)pointer;
  return command == BIO_CTRL_FLUSH ? 1 : 0;
}

static int replayDestroy(BIO *bio) {
  replay_t *replay = BIO_get_data(bio);
  if (replay != NULL) {
    free(replay->early);
    free(replay);
  }
  BIO_set_data(bio, NULL);
  return 1;
}

/* Reads from the replay BIO, writes straight to the socket; false when out of memory. */
static bool setReplayBio(SSL *ssl, int fd, const char *early, size_t earlyLength) {
  replay_t *replay = calloc(1, sizeof *replay);
  char *copy = malloc(earlyLength);
  BIO *reader = replayMethod == NULL ? NULL : BIO_new(replayMethod);
  BIO *writer = BIO_new_socket(fd, BIO_NOCLOSE);
  if (replay == NULL || copy == NULL || reader == NULL || writer == NULL) {
    free(replay);
    free(copy);
    BIO_free(reader);
    BIO_free(writer);
    return false;
  }
  memcpy(copy, early, earlyLength);
  *replay = (replay_t){.fd = fd, .early = copy, .earlyLength = earlyLength};
  BIO_set_data(reader, replay);
  BIO_set_init(reader, 1);
  SSL_set_bio(ssl, reader, writer);
  return true;
}

/* The context TLS pairs are made from, serving `certificate`; NULL (errors cleared) if OpenSSL refuses a part. */
static SSL_CTX *newServerContext(X509 *certificate, STACK_OF(X509) *chain, EVP_PKEY *key) {
  const uint64_t options = SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_TICKET;
  const long modes = SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
  SSL_CTX *context = SSL_CTX_new(TLS_server_method());
  // Partial writes and moving buffers: a write retried from the pending buffer; no tickets, no
  // renegotiation; a client that closes without close_notify (libpq does) is an end-of-file.
  bool ok = context != NULL && SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) == 1 && SSL_CTX_use_certificate(context, certificate) == 1 &&
            SSL_CTX_use_PrivateKey(context, key) == 1 && SSL_CTX_check_private_key(context) == 1 && (chain == NULL || SSL_CTX_set1_chain(context, chain) == 1) &&
            (SSL_CTX_set_mode(context, modes) & modes) == modes && (SSL_CTX_set_options(context, options) & options) == options &&
            SSL_CTX_set_num_tickets(context, 0) == 1;
  if (!ok) {
    SSL_CTX_free(context);
    ERR_clear_error();
    return NULL;
  }
  // Returns the previous mode: it cannot fail.
  SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_alpn_select_cb(context, onAlpn, NULL);
  return context;
}

/* The read BIO for direct TLS, made once for the process; false if OpenSSL refuses. */
static bool ensureReplayMethod(void) {
  if (replayMethod != NULL) return true;
  BIO_METHOD *method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "cellar direct TLS replay");
  if (method == NULL || BIO_meth_set_read(method, replayRead) != 1 || BIO_meth_set_ctrl(method, replayControl) != 1 || BIO_meth_set_destroy(method, replayDestroy) != 1) {
    BIO_meth_free(method);
    ERR_clear_error();
    return false;
  }
  replayMethod = method;
  return true;
}

/*
 * configureTls(certificatePem, keyPem): the certificate of every TLS pair made from now on, for
 * every server name. Called again with a renewed certificate, it replaces the context; a pair
 * already made keeps the context its SSL took a reference to.
 */
static napi_value configureTls(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return throwError(env, "configureTls needs a PEM certificate and key");
  char *certificatePem = stringArgument(env, argv[0]);
  char *keyPem = stringArgument(env, argv[1]);
  X509 *certificate;
  STACK_OF(X509) *chain;
  EVP_PKEY *key;
  bool parsed = certificatePem != NULL && keyPem != NULL && parseKeyPair(certificatePem, keyPem, &certificate, &chain, &key);
  free(certificatePem);
  free(keyPem);
  if (!parsed) return throwError(env, "configureTls needs a PEM certificate and key");
  SSL_CTX *context = newServerContext(certificate, chain, key);
  X509_free(certificate);
  EVP_PKEY_free(key);
  if (chain != NULL) sk_X509_pop_free(chain, X509_free);
  if (context == NULL) return throwError(env, "could not build the TLS context (does the key match the certificate?)");
  if (!ensureReplayMethod()) {
    SSL_CTX_free(context);
    return throwError(env, "could not build the TLS replay BIO");
  }
  // The relay thread never reads relay.tls: SSL_new (in queuePair) runs on this thread.
  SSL_CTX *previous = relay.tls;
  relay.tls = context;
  SSL_CTX_free(previous);
  return NULL;
}

/* A new pair from two descriptors (backend -1 for a TLS pair), queued for the thread; its id. */
static napi_value queuePair(napi_env env, int clientFd, int backendFd, bool tls, const char *early, size_t earlyLength) {
  napi_value result;
  pair_t *p = calloc(1, sizeof *p);
  if (p == NULL) return throwError(env, "out of memory");
  p->fd[CLIENT] = fcntl(clientFd, F_DUPFD_CLOEXEC, 0);
  p->fd[BACKEND] = backendFd < 0 ? -1 : fcntl(backendFd, F_DUPFD_CLOEXEC, 0);
  int error = p->fd[CLIENT] < 0 || (backendFd >= 0 && p->fd[BACKEND] < 0) ? errno : 0;
  for (int side = 0; side < 2 && error == 0; side++) {
    p->endpoint[side].pair = p;
    p->endpoint[side].side = side;
    if (p->fd[side] < 0) continue;
    // Shared with Node's descriptor (libuv sets it too): the thread must never block on a socket.
    int flags = fcntl(p->fd[side], F_GETFL);
    if (flags < 0 || fcntl(p->fd[side], F_SETFL, flags | O_NONBLOCK) < 0) error = errno;
  }
  if (error == 0 && tls) {
    p->ssl = SSL_new(relay.tls);
    bool bio = p->ssl != NULL && (earlyLength == 0 ? SSL_set_fd(p->ssl, p->fd[CLIENT]) == 1 : setReplayBio(p->ssl, p->fd[CLIENT], early, earlyLength));
    if (!bio) error = ENOMEM;
    else {
      p->alpnRequired = earlyLength > 0;
      SSL_set_accept_state(p->ssl);
      SSL_set_app_data(p->ssl, p);
      p->phase = PHASE_HANDSHAKE;
      p->handshakeWants = EPOLLIN;
    }
  }
  if (error != 0) {
    if (p->ssl != NULL) SSL_free(p->ssl);
    if (p->fd[CLIENT] >= 0) close(p->fd[CLIENT]);
    if (p->fd[BACKEND] >= 0) close(p->fd[BACKEND]);
    free(p);
    ERR_clear_error();
    return throwError(env, strerror(error));
  }
  pthread_mutex_lock(&relay.lock);
  uint32_t id = ++relay.nextId;
  p->id = id;
  p->next = relay.incoming;
  relay.incoming = p;
  pthread_mutex_unlock(&relay.lock);
  // From here the pair is the thread's: it may already be closed and freed (a client that has gone).
  wakeThread();
  napi_create_uint32(env, id, &result);
  return result;
}

/* adopt(clientFd, backendFd) → id: the relay takes duplicates of both sockets. */
static napi_value adopt(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fds[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (!relay.running) return throwError(env, "the relay is not running");
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fds[0]) != napi_ok || napi_get_value_int32(env, argv[1], &fds[1]) != napi_ok || fds[0] < 0 || fds[1] < 0) {
    return throwError(env, "adopt needs two file descriptors");
  }
  return queuePair(env, fds[0], fds[1], false, NULL, 0);
}

/*
 * acceptTls(clientFd, early) → id: the relay takes a duplicate of the socket and runs the TLS
 * handshake. `early` (a Buffer, maybe empty) is what JavaScript already read of a direct-TLS
 * ClientHello; a direct-TLS client must then negotiate ALPN `postgresql`.
 */
static napi_value acceptTls(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  void *early = NULL;
  size_t earlyLength = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (!relay.running) return throwError(env, "the relay is not running");
  if (relay.tls == NULL) return throwError(env, "TLS is not configured");
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 || napi_get_buffer_info(env, argv[1], &early, &earlyLength) != napi_ok) {
    return throwError(env, "acceptTls needs a file descriptor and a Buffer");
  }
  return queuePair(env, fd, -1, true, early, earlyLength);
}

static void queueCommand(command_t *command) {
  pthread_mutex_lock(&relay.lock);
  command->next = relay.commands;
  relay.commands = command;
  pthread_mutex_unlock(&relay.lock);
  wakeThread();
}

/* A command for pair `id`, owning nothing yet; NULL when out of memory. */
static command_t *newCommand(int kind, uint32_t id) {
  command_t *command = calloc(1, sizeof *command);
  if (command == NULL) return NULL;
  command->kind = kind;
  command->id = id;
  command->plainFd = command->backendFd = -1;
  return command;
}

/* abort(id): ends the pair if it still lives (JavaScript closed its own socket). */
static napi_value abortPair(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint32_t id;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (!relay.running) return NULL;
  if (argc < 1 || napi_get_value_uint32(env, argv[0], &id) != napi_ok) return throwError(env, "abort needs a pair id");
  command_t *command = newCommand(COMMAND_ABORT, id);
  if (command == NULL) return throwError(env, "out of memory");
  queueCommand(command);
  return NULL;
}

/* A duplicate of `fd` that never blocks, or -1 (errno set). */
static int duplicateNonBlocking(int fd) {
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return -1;
  int flags = fcntl(copy, F_GETFL);
  if (flags < 0 || fcntl(copy, F_SETFL, flags | O_NONBLOCK) < 0) {
    int error = errno;
    close(copy);
    errno = error;
    return -1;
  }
  return copy;
}

/* adoptTls(id, plainFd, backendFd): the TLS pair `id` relays to the backend from now on (see switchToBackend). */
static napi_value adoptTls(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint32_t id;
  int32_t plainFd, backendFd;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (!relay.running) return throwError(env, "the relay is not running");
  if (argc < 3 || napi_get_value_uint32(env, argv[0], &id) != napi_ok || napi_get_value_int32(env, argv[1], &plainFd) != napi_ok ||
      napi_get_value_int32(env, argv[2], &backendFd) != napi_ok || plainFd < 0 || backendFd < 0) {
    return throwError(env, "adoptTls needs a pair id and two file descriptors");
  }
  command_t *command = newCommand(COMMAND_SWITCH, id);
  if (command == NULL) return throwError(env, "out of memory");
  command->plainFd = duplicateNonBlocking(plainFd);
  command->backendFd = command->plainFd < 0 ? -1 : duplicateNonBlocking(backendFd);
  if (command->plainFd < 0 || command->backendFd < 0) {
    int error = errno;
    freeCommand(command);
    return throwError(env, strerror(error));
  }
  queueCommand(command);
  return NULL;
}

/* takeBytes() → [id, bytesIn, bytesOut, ...]: what each live pair relayed since the last call. */
static napi_value takeBytes(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result, value;
  napi_create_array(env, &result);
  uint32_t index = 0;
  pthread_mutex_lock(&relay.lock);
  for (pair_t *p = relay.live; p != NULL; p = p->next) {
    uint64_t in = atomic_exchange(&p->bytes[CLIENT], 0);
    uint64_t out = atomic_exchange(&p->bytes[BACKEND], 0);
    if (in == 0 && out == 0) continue;
    napi_create_uint32(env, p->id, &value);
    napi_set_element(env, result, index++, value);
    napi_create_double(env, (double)in, &value);
    napi_set_element(env, result, index++, value);
    napi_create_double(env, (double)out, &value);
    napi_set_element(env, result, index++, value);
  }
  pthread_mutex_unlock(&relay.lock);
  return result;
}

/* stop(): ends every pair and the thread; their EVENT_CLOSED calls still arrive. */
static napi_value stop(napi_env env, napi_callback_info info) {
  (void)env;
  (void)info;
  if (!relay.running) return NULL;
  pthread_mutex_lock(&relay.lock);
  relay.stopping = true;
  pthread_mutex_unlock(&relay.lock);
  wakeThread();
  pthread_join(relay.thread, NULL);
  for (command_t *command = relay.commands; command != NULL;) {
    command_t *next = command->next;
    freeCommand(command);
    command = next;
  }
  relay.commands = NULL;
  close(relay.epoll);
  close(relay.wake);
  relay.epoll = relay.wake = -1;
  relay.running = false;
  napi_release_threadsafe_function(relay.onEvent, napi_tsfn_release);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor properties[] = {
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"configureTls", NULL, configureTls, NULL, NULL, NULL, napi_default, NULL},
      {"adopt", NULL, adopt, NULL, NULL, NULL, napi_default, NULL},
      {"acceptTls", NULL, acceptTls, NULL, NULL, NULL, napi_default, NULL},
      {"adoptTls", NULL, adoptTls, NULL, NULL, NULL, napi_default, NULL},
      {"abort", NULL, abortPair, NULL, NULL, NULL, napi_default, NULL},
      {"takeBytes", NULL, takeBytes, NULL, NULL, NULL, napi_default, NULL},
      {"stop", NULL, stop, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
  return exports;
}
