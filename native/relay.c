/*
 * The proxy's data path once a connection is past its startup phase: one thread that moves bytes
 * between a client socket and its backend socket with epoll, read and write, outside Node's event
 * loop. Measured on the 2-core machine (pgbench -S, c=1): a relay like this adds ~10 µs to a
 * round trip where the same relay in Node adds ~50 µs (libuv, a Buffer and a JavaScript call per
 * read). The startup phase, TLS and throttled clusters stay in JavaScript (src/proxy/server.ts).
 *
 * JavaScript hands over duplicates of the two file descriptors (`adopt`) after it has stopped
 * reading them and while nothing it wrote is still queued; from then on only this thread reads or
 * writes them. Per direction at most one read's worth of bytes waits for a slow receiver, and the
 * sender is not read meanwhile: backpressure is TCP's own. A pair ends when both directions have
 * seen end-of-file (each forwarded as a shutdown) or on any socket error; then the thread closes
 * its descriptors and tells JavaScript (`onClosed`), which closes its own.
 *
 * Bounds: pairs are bounded by the proxy's connection limit (it adopts no more than it accepts);
 * one read is at most READ_BYTES_MAX; the wait is epoll's, woken by an eventfd for new pairs and
 * stop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <node_api.h>
#include <pthread.h>
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
#define CLIENT 0
#define BACKEND 1

typedef struct pair pair_t;

/* What an epoll event points at: one socket of a pair. */
typedef struct {
  pair_t *pair;
  int side;
} endpoint_t;

struct pair {
  uint32_t id;
  /* Duplicates owned by this thread: fd[CLIENT], fd[BACKEND]. */
  int fd[2];
  endpoint_t endpoint[2];
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

/* A pair that ended, on its way to JavaScript. */
typedef struct {
  uint32_t id;
  uint64_t bytesIn;
  uint64_t bytesOut;
} closed_t;

static struct {
  bool running;
  int epoll;
  int wake;
  pthread_t thread;
  pthread_mutex_t lock;
  /* Under lock: adopted pairs not yet registered with epoll, the live list, the stop request. */
  pair_t *incoming;
  pair_t *live;
  bool stopping;
  uint32_t nextId;
  napi_threadsafe_function onClosed;
} relay = {.lock = PTHREAD_MUTEX_INITIALIZER, .epoll = -1, .wake = -1};

/* The eventfd's epoll data: not an endpoint. */
static int wakeMarker;

static char readBuffer[READ_BYTES_MAX];

static uint32_t wantedEvents(const pair_t *p, int side) {
  uint32_t events = 0;
  if (!p->eof[side] && p->pendingLength[side] == 0) events |= EPOLLIN;
  if (p->pendingLength[1 - side] > 0) events |= EPOLLOUT;
  return events;
}

static void updateInterest(pair_t *p) {
  for (int side = 0; side < 2; side++) {
    uint32_t events = wantedEvents(p, side);
    if (events == p->interest[side]) continue;
    struct epoll_event event = {.events = events, .data.ptr = &p->endpoint[side]};
    epoll_ctl(relay.epoll, EPOLL_CTL_MOD, p->fd[side], &event);
    p->interest[side] = events;
  }
}

static void closePair(pair_t *p) {
  if (p->closed) return;
  p->closed = true;
  for (int side = 0; side < 2; side++) {
    epoll_ctl(relay.epoll, EPOLL_CTL_DEL, p->fd[side], NULL);
    close(p->fd[side]);
    free(p->pending[side]);
    p->pending[side] = NULL;
  }
  pthread_mutex_lock(&relay.lock);
  if (p->prev != NULL) p->prev->next = p->next;
  else relay.live = p->next;
  if (p->next != NULL) p->next->prev = p->prev;
  pthread_mutex_unlock(&relay.lock);
  closed_t *closed = malloc(sizeof *closed);
  if (closed != NULL) {
    closed->id = p->id;
    closed->bytesIn = atomic_exchange(&p->bytes[CLIENT], 0);
    closed->bytesOut = atomic_exchange(&p->bytes[BACKEND], 0);
    if (napi_call_threadsafe_function(relay.onClosed, closed, napi_tsfn_nonblocking) != napi_ok) free(closed);
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

/* Reads fd[side] once and forwards to the other socket; what it cannot take waits in pending. */
static void forward(pair_t *p, int side) {
  if (p->eof[side] || p->pendingLength[side] > 0) return;
  ssize_t n = read(p->fd[side], readBuffer, READ_BYTES_MAX);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    return closePair(p);
  }
  if (n == 0) {
    p->eof[side] = true;
    shutdown(p->fd[1 - side], SHUT_WR);
    if (p->eof[1 - side]) return closePair(p);
    return updateInterest(p);
  }
  atomic_fetch_add(&p->bytes[side], (uint64_t)n);
  ssize_t written = writeSome(p->fd[1 - side], readBuffer, (size_t)n);
  if (written < 0) return closePair(p);
  if (written == n) return;
  size_t rest = (size_t)(n - written);
  p->pending[side] = malloc(rest);
  if (p->pending[side] == NULL) return closePair(p);
  memcpy(p->pending[side], readBuffer + written, rest);
  p->pendingOffset[side] = 0;
  p->pendingLength[side] = rest;
  updateInterest(p);
}

/* fd[1 - side] can take more: writes what fd[side] left pending. */
static void flush(pair_t *p, int side) {
  if (p->pendingLength[side] == 0) return;
  size_t left = p->pendingLength[side] - p->pendingOffset[side];
  ssize_t written = writeSome(p->fd[1 - side], p->pending[side] + p->pendingOffset[side], left);
  if (written < 0) return closePair(p);
  p->pendingOffset[side] += (size_t)written;
  if (p->pendingOffset[side] < p->pendingLength[side]) return;
  free(p->pending[side]);
  p->pending[side] = NULL;
  p->pendingOffset[side] = 0;
  p->pendingLength[side] = 0;
  updateInterest(p);
}

static void onEvent(endpoint_t *endpoint, uint32_t events) {
  pair_t *p = endpoint->pair;
  int side = endpoint->side;
  if (p->closed) return;
  if (events & EPOLLERR) return closePair(p);
  if (events & EPOLLOUT) flush(p, 1 - side);
  if (p->closed) return;
  if (events & (EPOLLIN | EPOLLHUP)) {
    // A hang-up with nothing left to read in either direction would repeat forever: end the pair.
    if ((events & EPOLLHUP) && (p->eof[side] || p->pendingLength[side] > 0)) return closePair(p);
    forward(p, side);
  }
}

/* Registers adopted pairs; returns false when asked to stop. */
static bool takeIncoming(void) {
  uint64_t count;
  if (read(relay.wake, &count, sizeof count) < 0 && errno != EAGAIN) return true;
  pthread_mutex_lock(&relay.lock);
  pair_t *incoming = relay.incoming;
  relay.incoming = NULL;
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
      p->interest[side] = EPOLLIN;
      struct epoll_event event = {.events = EPOLLIN, .data.ptr = &p->endpoint[side]};
      if (epoll_ctl(relay.epoll, EPOLL_CTL_ADD, p->fd[side], &event) != 0) {
        // No event can point at it yet: freed at once.
        closePair(p);
        free(p);
        break;
      }
    }
  }
  return !stopping;
}

static void *run(void *unused) {
  (void)unused;
  struct epoll_event events[EVENTS_MAX];
  pair_t *ended = NULL;
  bool running = true;
  while (running) {
    int count = epoll_wait(relay.epoll, events, EVENTS_MAX, -1);
    if (count < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < count; i++) {
      if (events[i].data.ptr == &wakeMarker) {
        running = takeIncoming();
        continue;
      }
      endpoint_t *endpoint = events[i].data.ptr;
      bool wasClosed = endpoint->pair->closed;
      onEvent(endpoint, events[i].events);
      // Freed after the batch: a later event of this batch may still point at it.
      if (!wasClosed && endpoint->pair->closed) {
        endpoint->pair->next = ended;
        ended = endpoint->pair;
      }
    }
    while (ended != NULL) {
      pair_t *p = ended;
      ended = p->next;
      free(p);
    }
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
    free(p);
  }
  return NULL;
}

static void callClosed(napi_env env, napi_value callback, void *context, void *data) {
  (void)context;
  closed_t *closed = data;
  if (env != NULL && callback != NULL) {
    napi_value args[3], undefined;
    napi_create_uint32(env, closed->id, &args[0]);
    napi_create_double(env, (double)closed->bytesIn, &args[1]);
    napi_create_double(env, (double)closed->bytesOut, &args[2]);
    napi_get_undefined(env, &undefined);
    napi_call_function(env, undefined, callback, 3, args, NULL);
  }
  free(closed);
}

static napi_value throwError(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

/* start(onClosed(id, bytesIn, bytesOut)): starts the relay thread. */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (relay.running) return throwError(env, "the relay is already running");
  if (argc < 1) return throwError(env, "start needs an onClosed callback");
  napi_create_string_utf8(env, "cellar relay closed", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, callClosed, &relay.onClosed) != napi_ok) {
    return throwError(env, "could not create the relay's callback");
  }
  // The proxy's servers keep the process alive, not the relay.
  napi_unref_threadsafe_function(env, relay.onClosed);
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

/* adopt(clientFd, backendFd) → id: the relay takes duplicates of both sockets. */
static napi_value adopt(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int32_t fds[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (!relay.running) return throwError(env, "the relay is not running");
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fds[0]) != napi_ok || napi_get_value_int32(env, argv[1], &fds[1]) != napi_ok || fds[0] < 0 || fds[1] < 0) {
    return throwError(env, "adopt needs two file descriptors");
  }
  pair_t *p = calloc(1, sizeof *p);
  if (p == NULL) return throwError(env, "out of memory");
  p->fd[CLIENT] = fcntl(fds[CLIENT], F_DUPFD_CLOEXEC, 0);
  p->fd[BACKEND] = fcntl(fds[BACKEND], F_DUPFD_CLOEXEC, 0);
  if (p->fd[CLIENT] < 0 || p->fd[BACKEND] < 0) {
    int error = errno;
    if (p->fd[CLIENT] >= 0) close(p->fd[CLIENT]);
    if (p->fd[BACKEND] >= 0) close(p->fd[BACKEND]);
    free(p);
    return throwError(env, strerror(error));
  }
  for (int side = 0; side < 2; side++) {
    p->endpoint[side].pair = p;
    p->endpoint[side].side = side;
    // Shared with Node's descriptor (libuv sets it too): the thread must never block on a socket.
    int flags = fcntl(p->fd[side], F_GETFL);
    if (flags < 0 || fcntl(p->fd[side], F_SETFL, flags | O_NONBLOCK) < 0) {
      int error = errno;
      close(p->fd[CLIENT]);
      close(p->fd[BACKEND]);
      free(p);
      return throwError(env, strerror(error));
    }
  }
  pthread_mutex_lock(&relay.lock);
  p->id = ++relay.nextId;
  p->next = relay.incoming;
  relay.incoming = p;
  pthread_mutex_unlock(&relay.lock);
  uint64_t one = 1;
  if (write(relay.wake, &one, sizeof one) < 0 && errno != EAGAIN) return throwError(env, strerror(errno));
  napi_create_uint32(env, p->id, &result);
  return result;
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

/* stop(): ends every pair and the thread; their onClosed calls still arrive. */
static napi_value stop(napi_env env, napi_callback_info info) {
  (void)info;
  if (!relay.running) return NULL;
  pthread_mutex_lock(&relay.lock);
  relay.stopping = true;
  pthread_mutex_unlock(&relay.lock);
  uint64_t one = 1;
  if (write(relay.wake, &one, sizeof one) < 0 && errno != EAGAIN) return throwError(env, strerror(errno));
  pthread_join(relay.thread, NULL);
  close(relay.epoll);
  close(relay.wake);
  relay.epoll = relay.wake = -1;
  relay.running = false;
  napi_release_threadsafe_function(relay.onClosed, napi_tsfn_release);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor properties[] = {
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"adopt", NULL, adopt, NULL, NULL, NULL, napi_default, NULL},
      {"takeBytes", NULL, takeBytes, NULL, NULL, NULL, napi_default, NULL},
      {"stop", NULL, stop, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
  return exports;
}
