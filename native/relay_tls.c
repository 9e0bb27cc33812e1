/* TLS for TLS pairs: the context, the handshake, ALPN, the replay of a direct-TLS ClientHello; see relay.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "relay.h"

/*
 * The certificate and settings for TLS pairs; replaced by configureTlsContext when the
 * certificate is renewed. Read and replaced on JavaScript's thread only (SSL_new, in attachTls,
 * takes its own reference), so the relay thread never sees it change.
 */
static SSL_CTX *context;

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

/* ALPN: `postgresql` when the client offers it (Postgres 17), else none. */
static int onAlpn(SSL *ssl, const unsigned char **out, unsigned char *outLength, const unsigned char *in, unsigned int inLength, void *unused) {
  (void)ssl;
  (void)unused;
  unsigned char *selected;
  if (SSL_select_next_proto(&selected, outLength, alpnPostgres, sizeof alpnPostgres, in, inLength) != OPENSSL_NPN_NEGOTIATED) return SSL_TLSEXT_ERR_NOACK;
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

/* The context TLS pairs are made from, serving `certificate`; NULL (errors cleared) if OpenSSL refuses a part. */
static SSL_CTX *newServerContext(X509 *certificate, STACK_OF(X509) *chain, EVP_PKEY *key) {
  const uint64_t options = SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_TICKET;
  const long modes = SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
  SSL_CTX *made = SSL_CTX_new(TLS_server_method());
  // Partial writes and moving buffers: a write retried from the pending buffer; no tickets, no
  // renegotiation; a client that closes without close_notify (libpq does) is an end-of-file.
  bool ok = made != NULL && SSL_CTX_set_min_proto_version(made, TLS1_2_VERSION) == 1 && SSL_CTX_use_certificate(made, certificate) == 1 &&
            SSL_CTX_use_PrivateKey(made, key) == 1 && SSL_CTX_check_private_key(made) == 1 && (chain == NULL || SSL_CTX_set1_chain(made, chain) == 1) &&
            (SSL_CTX_set_mode(made, modes) & modes) == modes && (SSL_CTX_set_options(made, options) & options) == options &&
            SSL_CTX_set_num_tickets(made, 0) == 1;
  if (!ok) {
    SSL_CTX_free(made);
    ERR_clear_error();
    return NULL;
  }
  // Returns the previous mode: it cannot fail.
  SSL_CTX_set_session_cache_mode(made, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_alpn_select_cb(made, onAlpn, NULL);
  return made;
}

/* Parses PEM text into a certificate, its chain and a key; false if any part is missing or bad. */
static bool parseKeyPair(const char *certificatePem, const char *keyPem, X509 **certificate, STACK_OF(X509) **chain, EVP_PKEY **key) {
  *certificate = NULL;
  *chain = NULL;
  *key = NULL;
  BIO *bio = BIO_new_mem_buf(certificatePem, -1);
  if (bio == NULL) return false;
  *certificate = PEM_read_bio_X509(bio, NULL, NULL, NULL);
  bool chainOk = true;
  for (int i = 0; *certificate != NULL && i < CERTIFICATE_CHAIN_MAX; i++) {
    X509 *extra = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (extra == NULL) break;
    if (*chain == NULL) *chain = sk_X509_new_null();
    if (*chain == NULL || sk_X509_push(*chain, extra) == 0) {
      // A chain cut short would be served as if whole: refuse the pair instead.
      X509_free(extra);
      chainOk = false;
      break;
    }
  }
  BIO_free(bio);
  ERR_clear_error();
  bio = BIO_new_mem_buf(keyPem, -1);
  if (bio != NULL) {
    *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
  }
  ERR_clear_error();
  if (chainOk && *certificate != NULL && *key != NULL) return true;
  X509_free(*certificate);
  EVP_PKEY_free(*key);
  if (*chain != NULL) sk_X509_pop_free(*chain, X509_free);
  *certificate = NULL;
  *chain = NULL;
  *key = NULL;
  return false;
}

const char *configureTlsContext(const char *certificatePem, const char *keyPem) {
  X509 *certificate;
  STACK_OF(X509) *chain;
  EVP_PKEY *key;
  if (!parseKeyPair(certificatePem, keyPem, &certificate, &chain, &key)) return "configureTls needs a PEM certificate and key";
  SSL_CTX *made = newServerContext(certificate, chain, key);
  X509_free(certificate);
  EVP_PKEY_free(key);
  if (chain != NULL) sk_X509_pop_free(chain, X509_free);
  if (made == NULL) return "could not build the TLS context (does the key match the certificate?)";
  if (!ensureReplayMethod()) {
    SSL_CTX_free(made);
    return "could not build the TLS replay BIO";
  }
  SSL_CTX *previous = context;
  context = made;
  SSL_CTX_free(previous);
  return NULL;
}

bool tlsConfigured(void) {
  return context != NULL;
}

bool attachTls(pair_t *p, const char *early, size_t earlyLength) {
  p->ssl = context == NULL ? NULL : SSL_new(context);
  if (p->ssl == NULL) return false;
  if (!(earlyLength == 0 ? SSL_set_fd(p->ssl, p->fd[CLIENT]) == 1 : setReplayBio(p->ssl, p->fd[CLIENT], early, earlyLength))) return false;
  p->alpnRequired = earlyLength > 0;
  SSL_set_accept_state(p->ssl);
  if (SSL_set_app_data(p->ssl, p) != 1) return false;
  p->phase = PHASE_HANDSHAKE;
  p->handshakeWants = EPOLLIN;
  return true;
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
      (void)SSL_shutdown(p->ssl);
      ERR_clear_error();
      if (shutdown(p->fd[CLIENT], SHUT_WR) != 0) return closePair(p);
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
  if (!p->closed && SSL_has_pending(p->ssl)) forward(p, CLIENT);
}

void handshake(pair_t *p) {
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
