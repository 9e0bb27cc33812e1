/*
 * bench/floor-relay.c: the least a relay process can do between pgbench and Postgres, measured by
 * bench/proxy in the same run as the proxy to show what any relay costs on the machine.
 *
 * One thread, epoll, one read and one write per message, no protocol handling. With a certificate
 * and key it answers an SSLRequest with 'S' and terminates TLS (OpenSSL), relaying the plaintext
 * to the backend over plain TCP, as the proxy and PgBouncer do in the bench. It serves a benchmark,
 * not users: a handshake blocks the thread, and a write waits for its socket.
 *
 *   floor-relay LISTEN_PORT BACKEND_PORT [CERT_FILE KEY_FILE]
 *
 * It prints "ready" once listening and runs until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONNECTIONS_MAX 1024
#define EVENTS_MAX 64
#define BUFFER_BYTES 65536
#define POLL_MS_MAX 10000

typedef struct {
  int fd;
  int peer;
  /* The client side's TLS session, or NULL (plain, or the backend side). */
  SSL *ssl;
} end_t;

static end_t ends[CONNECTIONS_MAX];
static char buffer[BUFFER_BYTES];

static int waitFor(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  return poll(&p, 1, POLL_MS_MAX) == 1 ? 0 : -1;
}

/* Sends (or receives) exactly `length` bytes, waiting for the socket when it is not ready. */
static int moveAll(int fd, char *data, size_t length, bool sending) {
  while (length > 0) {
    ssize_t n = sending ? send(fd, data, length, MSG_NOSIGNAL) : recv(fd, data, length, 0);
    if (n > 0) {
      data += n;
      length -= (size_t)n;
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (waitFor(fd, sending ? POLLOUT : POLLIN) != 0) return -1;
    } else {
      return -1;
    }
  }
  return 0;
}

static int writeAll(int fd, const char *data, size_t length) {
  return moveAll(fd, (char *)data, length, true);
}

static int sslWriteAll(SSL *ssl, int fd, const char *data, size_t length) {
  while (length > 0) {
    int n = SSL_write(ssl, data, (int)length);
    if (n > 0) {
      data += n;
      length -= (size_t)n;
      continue;
    }
    int error = SSL_get_error(ssl, n);
    if (error == SSL_ERROR_WANT_WRITE && waitFor(fd, POLLOUT) == 0) continue;
    if (error == SSL_ERROR_WANT_READ && waitFor(fd, POLLIN) == 0) continue;
    return -1;
  }
  return 0;
}

/* SSLRequest: length 8, code 80877103. The floor serves pgbench with sslmode=require only. */
static SSL *handshake(SSL_CTX *context, int fd) {
  static const unsigned char request[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
  char first[8];
  if (moveAll(fd, first, sizeof first, false) != 0 || memcmp(first, request, sizeof request) != 0) return NULL;
  if (writeAll(fd, "S", 1) != 0) return NULL;
  SSL *ssl = SSL_new(context);
  if (ssl == NULL) return NULL;
  SSL_set_fd(ssl, fd);
  for (;;) {
    int result = SSL_accept(ssl);
    if (result == 1) return ssl;
    int error = SSL_get_error(ssl, result);
    if (error == SSL_ERROR_WANT_READ && waitFor(fd, POLLIN) == 0) continue;
    if (error == SSL_ERROR_WANT_WRITE && waitFor(fd, POLLOUT) == 0) continue;
    SSL_free(ssl);
    return NULL;
  }
}

static void closeBoth(int epoll, int fd) {
  int peer = ends[fd].peer;
  int fds[2] = {fd, peer};
  for (int i = 0; i < 2; i++) {
    end_t *end = &ends[fds[i]];
    epoll_ctl(epoll, EPOLL_CTL_DEL, end->fd, NULL);
    if (end->ssl != NULL) SSL_free(end->ssl);
    close(end->fd);
    *end = (end_t){.fd = -1, .peer = -1, .ssl = NULL};
  }
}

static int listenOn(int port) {
  int one = 1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(fd, (struct sockaddr *)&address, sizeof address) != 0 || listen(fd, 128) != 0) return -1;
  return fd;
}

static int connectTo(int port) {
  int one = 1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void accepted(int epoll, int client, int backendPort, SSL_CTX *context) {
  int one = 1;
  setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  SSL *ssl = context != NULL ? handshake(context, client) : NULL;
  int backend = context == NULL || ssl != NULL ? connectTo(backendPort) : -1;
  if (backend < 0 || backend >= CONNECTIONS_MAX || client >= CONNECTIONS_MAX) {
    if (ssl != NULL) SSL_free(ssl);
    if (backend >= 0) close(backend);
    close(client);
    return;
  }
  ends[client] = (end_t){.fd = client, .peer = backend, .ssl = ssl};
  ends[backend] = (end_t){.fd = backend, .peer = client, .ssl = NULL};
  for (int fd = client, i = 0; i < 2; i++, fd = backend) {
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
  }
}

/* Moves what one end has to the other; returns -1 when the pair should close. */
static int forward(int fd) {
  end_t *from = &ends[fd];
  end_t *to = &ends[from->peer];
  if (from->ssl == NULL) {
    ssize_t n = recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (n <= 0) return -1;
    return to->ssl != NULL ? sslWriteAll(to->ssl, to->fd, buffer, (size_t)n) : writeAll(to->fd, buffer, (size_t)n);
  }
  // TLS: every record OpenSSL can complete without blocking.
  for (;;) {
    int n = SSL_read(from->ssl, buffer, sizeof buffer);
    if (n > 0) {
      if (writeAll(to->fd, buffer, (size_t)n) != 0) return -1;
      continue;
    }
    int error = SSL_get_error(from->ssl, n);
    return error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE ? 0 : -1;
  }
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 5) {
    fprintf(stderr, "usage: floor-relay LISTEN_PORT BACKEND_PORT [CERT_FILE KEY_FILE]\n");
    return 2;
  }
  int backendPort = atoi(argv[2]);
  SSL_CTX *context = NULL;
  if (argc == 5) {
    context = SSL_CTX_new(TLS_server_method());
    if (context == NULL || SSL_CTX_use_certificate_chain_file(context, argv[3]) != 1 || SSL_CTX_use_PrivateKey_file(context, argv[4], SSL_FILETYPE_PEM) != 1) {
      fprintf(stderr, "floor-relay: cannot load %s and %s\n", argv[3], argv[4]);
      return 1;
    }
  }
  for (int i = 0; i < CONNECTIONS_MAX; i++) ends[i] = (end_t){.fd = -1, .peer = -1, .ssl = NULL};
  int listener = listenOn(atoi(argv[1]));
  int epoll = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event event = {.events = EPOLLIN, .data.fd = listener};
  if (listener < 0 || epoll < 0 || epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event) != 0) {
    perror("floor-relay: listen");
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  struct epoll_event events[EVENTS_MAX];
  for (;;) {
    int count = epoll_wait(epoll, events, EVENTS_MAX, -1);
    if (count < 0 && errno != EINTR) return 1;
    for (int i = 0; i < count; i++) {
      int fd = events[i].data.fd;
      if (fd == listener) {
        int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (client >= 0) accepted(epoll, client, backendPort, context);
      } else if (ends[fd].fd == fd && forward(fd) != 0) {
        closeBoth(epoll, fd);
      }
    }
  }
}
