/* A pair's I/O: read, write, what waits for a slow receiver, shutdown, close; see relay.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "relay.h"

/* Relay thread only: one read's bytes on their way to the other socket. */
static char readBuffer[READ_BYTES_MAX];

int duplicateNonBlocking(int fd) {
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return -1;
  // Shared with Node's descriptor (libuv sets it too): the thread must never block on a socket.
  int flags = fcntl(copy, F_GETFL);
  if (flags < 0 || fcntl(copy, F_SETFL, flags | O_NONBLOCK) < 0) {
    int error = errno;
    close(copy);
    errno = error;
    return -1;
  }
  return copy;
}

pair_t *newPair(int clientFd, int backendFd, int *error) {
  pair_t *p = calloc(1, sizeof *p);
  if (p == NULL) {
    *error = ENOMEM;
    return NULL;
  }
  p->fd[CLIENT] = p->fd[BACKEND] = -1;
  for (int side = 0; side < 2; side++) {
    p->endpoint[side].pair = p;
    p->endpoint[side].side = side;
  }
  p->fd[CLIENT] = duplicateNonBlocking(clientFd);
  if (p->fd[CLIENT] >= 0 && backendFd >= 0) p->fd[BACKEND] = duplicateNonBlocking(backendFd);
  if (p->fd[CLIENT] < 0 || (backendFd >= 0 && p->fd[BACKEND] < 0)) {
    *error = errno;
    freeUnqueuedPair(p);
    return NULL;
  }
  return p;
}

void freeUnqueuedPair(pair_t *p) {
  if (p->ssl != NULL) SSL_free(p->ssl);
  // close() of a descriptor this code duplicated: its errors (EINTR, EIO) leave nothing to undo.
  if (p->fd[CLIENT] >= 0) close(p->fd[CLIENT]);
  if (p->fd[BACKEND] >= 0) close(p->fd[BACKEND]);
  free(p);
  ERR_clear_error();
}

uint32_t wantedEvents(const pair_t *p, int side) {
  if (p->fd[side] < 0) return 0;
  if (p->phase != PHASE_RELAY) return side == CLIENT ? p->handshakeWants : 0;
  uint32_t events = 0;
  if (!p->eof[side] && p->pendingLength[side] == 0) events |= EPOLLIN;
  if (p->pendingLength[1 - side] > 0) events |= EPOLLOUT;
  if (side == CLIENT && p->readWantsWrite) events |= EPOLLOUT;
  return events;
}

void updateInterest(pair_t *p) {
  for (int side = 0; side < 2 && !p->closed; side++) {
    uint32_t events = wantedEvents(p, side);
    if (p->fd[side] < 0 || events == p->interest[side]) continue;
    struct epoll_event event = {.events = events, .data.ptr = &p->endpoint[side]};
    // A socket epoll no longer watches as the pair needs would stall it for good: end it instead.
    if (epoll_ctl(relay.epoll, EPOLL_CTL_MOD, p->fd[side], &event) != 0) return closePair(p);
    p->interest[side] = events;
  }
}

bool registerPair(pair_t *p) {
  for (int side = 0; side < 2; side++) {
    if (p->fd[side] < 0) continue;
    p->interest[side] = wantedEvents(p, side);
    struct epoll_event event = {.events = p->interest[side], .data.ptr = &p->endpoint[side]};
    if (epoll_ctl(relay.epoll, EPOLL_CTL_ADD, p->fd[side], &event) != 0) {
      closePair(p);
      return false;
    }
  }
  return true;
}

void closePair(pair_t *p) {
  if (p->closed) return;
  p->closed = true;
  if (p->ssl != NULL) SSL_free(p->ssl);
  p->ssl = NULL;
  for (int side = 0; side < 2; side++) {
    if (p->fd[side] >= 0) {
      // Not checked: closing the descriptor removes it from epoll anyway (it is the only copy epoll has).
      epoll_ctl(relay.epoll, EPOLL_CTL_DEL, p->fd[side], NULL);
      close(p->fd[side]);
      p->fd[side] = -1;
    }
    free(p->pending[side]);
    p->pending[side] = NULL;
    p->pendingOffset[side] = 0;
    p->pendingLength[side] = 0;
  }
  pthread_mutex_lock(&relay.lock);
  if (p->prev != NULL) p->prev->next = p->next;
  else relay.live = p->next;
  if (p->next != NULL) p->next->prev = p->prev;
  pthread_mutex_unlock(&relay.lock);
  // Fails only when out of memory or while the binding stops; JavaScript's sockets then end with its own close or shutdown.
  (void)emit(EVENT_CLOSED, p, -1, NULL);
  p->next = relay.ended;
  relay.ended = p;
}

void freeEnded(void) {
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

/* fd[side] has nothing more to send: shut the other socket for writing (TLS: close_notify first); false if the kernel refuses. */
static bool shutdownWrite(pair_t *p, int side) {
  if (side == CLIENT && p->ssl != NULL) {
    ERR_clear_error();
    // Best effort: a close_notify the socket cannot take now is not retried; the TCP shutdown still ends the stream.
    (void)SSL_shutdown(p->ssl);
    ERR_clear_error();
  }
  return shutdown(p->fd[side], SHUT_WR) == 0;
}

void forward(pair_t *p, int side) {
  // A TLS session may hold decrypted bytes no socket event will announce: read until it holds none.
  for (int reads = 0; reads < TLS_PENDING_READS_MAX; reads++) {
    if (p->closed || p->eof[side] || p->pendingLength[side] > 0) return;
    ssize_t n = readSide(p, side);
    if (n == -1) return updateInterest(p);
    if (n == -2) return closePair(p);
    if (n == 0) {
      p->eof[side] = true;
      if (!shutdownWrite(p, 1 - side) || p->eof[1 - side]) return closePair(p);
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
  if (p->closed || p->pendingLength[side] == 0) return;
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
  if (!p->closed && side == CLIENT && p->ssl != NULL && SSL_has_pending(p->ssl)) forward(p, CLIENT);
}

void onPairEvent(endpoint_t *endpoint, uint32_t events) {
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
void switchToBackend(pair_t *p, int plainFd, int backendFd) {
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
  // Not checked: the close right after removes the socketpair's end from epoll anyway.
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
  flush(p, CLIENT);
}
