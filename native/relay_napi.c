/*
 * The binding to JavaScript (src/proxy/native-relay.ts): arguments checked, every N-API call's
 * status checked (a failure is thrown as a JS error, or ends the pair it concerns), events handed
 * to JavaScript through a thread-safe function; see relay.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay.h"

/* An event on its way to JavaScript. */
typedef struct {
  int kind;
  uint32_t id;
  uint64_t bytesIn;
  uint64_t bytesOut;
  int fd;
  char name[SERVER_NAME_BYTES_MAX];
} event_t;

/* Set by start, released by stop; called from the relay thread. */
static napi_threadsafe_function onEvent;

static napi_value throwError(napi_env env, const char *message) {
  // If even throwing fails (an exception is already pending), that exception reaches JavaScript instead.
  (void)napi_throw_error(env, NULL, message);
  return NULL;
}

bool emit(int kind, pair_t *p, int fd, const char *name) {
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
  if (napi_call_threadsafe_function(onEvent, event, napi_tsfn_nonblocking) != napi_ok) {
    free(event);
    return false;
  }
  return true;
}

/* The event's arguments for JavaScript's onEvent; false if N-API could not make one. */
static bool eventArguments(napi_env env, const event_t *event, napi_value args[6]) {
  return napi_create_int32(env, event->kind, &args[0]) == napi_ok && napi_create_uint32(env, event->id, &args[1]) == napi_ok &&
         napi_create_double(env, (double)event->bytesIn, &args[2]) == napi_ok && napi_create_double(env, (double)event->bytesOut, &args[3]) == napi_ok &&
         napi_create_int32(env, event->fd, &args[4]) == napi_ok && napi_create_string_utf8(env, event->name, NAPI_AUTO_LENGTH, &args[5]) == napi_ok;
}

static void callEvent(napi_env env, napi_value callback, void *context, void *data) {
  (void)context;
  event_t *event = data;
  napi_value args[6], undefined;
  if (env == NULL || callback == NULL || !eventArguments(env, event, args) || napi_get_undefined(env, &undefined) != napi_ok) {
    // Not handed over (the binding is going away, or N-API could not make the arguments): the descriptor is still ours.
    if (event->fd >= 0) close(event->fd);
  } else if (napi_call_function(env, undefined, callback, 6, args, NULL) != napi_ok) {
    // native-relay.ts catches its own errors, so a throw here is a bug: reported as uncaught, as Node does for any callback.
    bool pending = false;
    napi_value error;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending && napi_get_and_clear_last_exception(env, &error) == napi_ok) (void)napi_fatal_exception(env, error);
  }
  free(event);
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

/* The call's arguments into argv (at most *argc); false (a JS error thrown) if N-API cannot read them or there are fewer than `needed`. */
static bool arguments(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv, size_t needed, const char *usage) {
  if (napi_get_cb_info(env, info, argc, argv, NULL, NULL) != napi_ok || *argc < needed) {
    throwError(env, usage);
    return false;
  }
  return true;
}

/* start(onEvent(kind, id, bytesIn, bytesOut, fd, name)): starts the relay thread. */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], name;
  napi_valuetype type;
  if (!arguments(env, info, &argc, argv, 1, "start needs an onEvent callback")) return NULL;
  if (relay.running) return throwError(env, "the relay is already running");
  if (napi_typeof(env, argv[0], &type) != napi_ok || type != napi_function) return throwError(env, "start needs an onEvent callback");
  if (napi_create_string_utf8(env, "cellar relay events", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, callEvent, &onEvent) != napi_ok) {
    return throwError(env, "could not create the relay's callback");
  }
  // The proxy's servers keep the process alive, not the relay.
  if (napi_unref_threadsafe_function(env, onEvent) != napi_ok) {
    (void)napi_release_threadsafe_function(onEvent, napi_tsfn_abort);
    return throwError(env, "could not unref the relay's callback");
  }
  const char *failure = startThread();
  if (failure != NULL) {
    (void)napi_release_threadsafe_function(onEvent, napi_tsfn_abort);
    return throwError(env, failure);
  }
  return NULL;
}

/*
 * configureTls(certificatePem, keyPem): the certificate of every TLS pair made from now on, for
 * every server name. Called again with a renewed certificate, it replaces the context; a pair
 * already made keeps the context its SSL took a reference to.
 */
static napi_value configureTls(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (!arguments(env, info, &argc, argv, 2, "configureTls needs a PEM certificate and key")) return NULL;
  char *certificatePem = stringArgument(env, argv[0]);
  char *keyPem = stringArgument(env, argv[1]);
  const char *failure = certificatePem == NULL || keyPem == NULL ? "configureTls needs a PEM certificate and key" : configureTlsContext(certificatePem, keyPem);
  free(certificatePem);
  free(keyPem);
  return failure == NULL ? NULL : throwError(env, failure);
}

/* A new pair from two descriptors (backend -1 for a TLS pair), queued for the thread; its id. */
static napi_value startPair(napi_env env, int clientFd, int backendFd, bool tls, const char *early, size_t earlyLength) {
  int error = 0;
  pair_t *p = newPair(clientFd, backendFd, &error);
  if (p == NULL) return throwError(env, strerror(error));
  if (tls && !attachTls(p, early, earlyLength)) {
    freeUnqueuedPair(p);
    return throwError(env, "could not start a TLS session");
  }
  uint32_t id = queuePair(p);
  napi_value result;
  if (napi_create_uint32(env, id, &result) != napi_ok) {
    // JavaScript will not know the pair: the thread must not keep it.
    command_t *command = newCommand(COMMAND_ABORT, id);
    if (command != NULL) queueCommand(command);
    return throwError(env, "could not return the pair's id");
  }
  return result;
}

/* adopt(clientFd, backendFd) → id: the relay takes duplicates of both sockets. */
static napi_value adopt(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fds[2];
  if (!arguments(env, info, &argc, argv, 2, "adopt needs two file descriptors")) return NULL;
  if (!relay.running) return throwError(env, "the relay is not running");
  if (napi_get_value_int32(env, argv[0], &fds[0]) != napi_ok || napi_get_value_int32(env, argv[1], &fds[1]) != napi_ok || fds[0] < 0 || fds[1] < 0) {
    return throwError(env, "adopt needs two file descriptors");
  }
  return startPair(env, fds[0], fds[1], false, NULL, 0);
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
  if (!arguments(env, info, &argc, argv, 2, "acceptTls needs a file descriptor and a Buffer")) return NULL;
  if (!relay.running) return throwError(env, "the relay is not running");
  if (!tlsConfigured()) return throwError(env, "TLS is not configured");
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 || napi_get_buffer_info(env, argv[1], &early, &earlyLength) != napi_ok) {
    return throwError(env, "acceptTls needs a file descriptor and a Buffer");
  }
  return startPair(env, fd, -1, true, early, earlyLength);
}

/* abort(id): ends the pair if it still lives (JavaScript closed its own socket). */
static napi_value abortPair(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint32_t id;
  if (!arguments(env, info, &argc, argv, 1, "abort needs a pair id")) return NULL;
  if (!relay.running) return NULL;
  if (napi_get_value_uint32(env, argv[0], &id) != napi_ok) return throwError(env, "abort needs a pair id");
  command_t *command = newCommand(COMMAND_ABORT, id);
  if (command == NULL) return throwError(env, "out of memory");
  queueCommand(command);
  return NULL;
}

/* adoptTls(id, plainFd, backendFd): the TLS pair `id` relays to the backend from now on (see switchToBackend). */
static napi_value adoptTls(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint32_t id;
  int32_t plainFd, backendFd;
  if (!arguments(env, info, &argc, argv, 3, "adoptTls needs a pair id and two file descriptors")) return NULL;
  if (!relay.running) return throwError(env, "the relay is not running");
  if (napi_get_value_uint32(env, argv[0], &id) != napi_ok || napi_get_value_int32(env, argv[1], &plainFd) != napi_ok || napi_get_value_int32(env, argv[2], &backendFd) != napi_ok ||
      plainFd < 0 || backendFd < 0) {
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

typedef struct {
  napi_env env;
  napi_value array;
  uint32_t index;
} byte_counts_t;

static bool appendCounts(uint32_t id, uint64_t bytesIn, uint64_t bytesOut, void *context) {
  byte_counts_t *counts = context;
  napi_value values[3];
  if (napi_create_uint32(counts->env, id, &values[0]) != napi_ok || napi_create_double(counts->env, (double)bytesIn, &values[1]) != napi_ok ||
      napi_create_double(counts->env, (double)bytesOut, &values[2]) != napi_ok) {
    return false;
  }
  for (int i = 0; i < 3; i++) {
    if (napi_set_element(counts->env, counts->array, counts->index + (uint32_t)i, values[i]) != napi_ok) return false;
  }
  counts->index += 3;
  return true;
}

/* takeBytes() → [id, bytesIn, bytesOut, ...]: what each live pair relayed since the last call. */
static napi_value takeBytesCall(napi_env env, napi_callback_info info) {
  (void)info;
  byte_counts_t counts = {.env = env, .index = 0};
  if (napi_create_array(env, &counts.array) != napi_ok) return throwError(env, "could not make the byte counts");
  // Counts not handed over stay with their pairs, for the next call.
  if (!takeBytes(appendCounts, &counts)) return throwError(env, "could not hand over the byte counts");
  return counts.array;
}

/* stop(): ends every pair and the thread; their EVENT_CLOSED calls still arrive. */
static napi_value stop(napi_env env, napi_callback_info info) {
  (void)info;
  if (!relay.running) return NULL;
  const char *failure = stopThread();
  if (failure != NULL) return throwError(env, failure);
  if (napi_release_threadsafe_function(onEvent, napi_tsfn_release) != napi_ok) return throwError(env, "could not release the relay's callback");
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
      {"takeBytes", NULL, takeBytesCall, NULL, NULL, NULL, napi_default, NULL},
      {"stop", NULL, stop, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties) != napi_ok) return throwError(env, "could not define the relay's functions");
  return exports;
}
