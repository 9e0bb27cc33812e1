/* The relay thread: its epoll loop, the pairs and commands JavaScript hands it, stopping; see relay.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "relay.h"

relay_t relay = {.lock = PTHREAD_MUTEX_INITIALIZER, .epoll = -1, .wake = -1};

/* The eventfd's epoll data: not an endpoint. */
static int wakeMarker;

static void wakeThread(void) {
  uint64_t one = 1;
  // An eventfd write fails only when its counter is full, and then the thread is awake anyway.
  (void)!write(relay.wake, &one, sizeof one);
}

uint32_t queuePair(pair_t *p) {
  pthread_mutex_lock(&relay.lock);
  uint32_t id = ++relay.nextId;
  p->id = id;
  p->next = relay.incoming;
  relay.incoming = p;
  pthread_mutex_unlock(&relay.lock);
  // From here the pair is the thread's: it may already be closed and freed (a client that has gone).
  wakeThread();
  return id;
}

command_t *newCommand(int kind, uint32_t id) {
  command_t *command = calloc(1, sizeof *command);
  if (command == NULL) return NULL;
  command->kind = kind;
  command->id = id;
  command->plainFd = command->backendFd = -1;
  return command;
}

void freeCommand(command_t *command) {
  if (command->plainFd >= 0) close(command->plainFd);
  if (command->backendFd >= 0) close(command->backendFd);
  free(command);
}

void queueCommand(command_t *command) {
  pthread_mutex_lock(&relay.lock);
  command->next = relay.commands;
  relay.commands = command;
  pthread_mutex_unlock(&relay.lock);
  wakeThread();
}

bool takeBytes(bool (*visit)(uint32_t id, uint64_t bytesIn, uint64_t bytesOut, void *context), void *context) {
  bool ok = true;
  pthread_mutex_lock(&relay.lock);
  for (pair_t *p = relay.live; p != NULL && ok; p = p->next) {
    uint64_t in = atomic_load(&p->bytes[CLIENT]);
    uint64_t out = atomic_load(&p->bytes[BACKEND]);
    if (in == 0 && out == 0) continue;
    ok = visit(p->id, in, out, context);
    // Taken only once handed over: what moved meanwhile stays for the next call.
    if (ok) {
      atomic_fetch_sub(&p->bytes[CLIENT], in);
      atomic_fetch_sub(&p->bytes[BACKEND], out);
    }
  }
  pthread_mutex_unlock(&relay.lock);
  return ok;
}

static pair_t *findLive(uint32_t id) {
  // Only the relay thread changes the list, and this runs on it: no lock needed to read.
  for (pair_t *p = relay.live; p != NULL; p = p->next) {
    if (p->id == id) return p;
  }
  return NULL;
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
    // A direct-TLS ClientHello was read before the handover: no socket event will announce it.
    if (registerPair(p) && p->phase == PHASE_HANDSHAKE) handshake(p);
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
      // EBADF/EINVAL: the epoll descriptor is broken; every pair ends below and JavaScript is told.
      break;
    }
    for (int i = 0; i < count; i++) {
      if (events[i].data.ptr == &wakeMarker) running = takeWork();
      else onPairEvent(events[i].data.ptr, events[i].events);
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

static void closeDescriptors(void) {
  if (relay.epoll >= 0) close(relay.epoll);
  if (relay.wake >= 0) close(relay.wake);
  relay.epoll = relay.wake = -1;
}

const char *startThread(void) {
  relay.epoll = epoll_create1(EPOLL_CLOEXEC);
  relay.wake = relay.epoll < 0 ? -1 : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct epoll_event event = {.events = EPOLLIN, .data.ptr = &wakeMarker};
  if (relay.epoll < 0 || relay.wake < 0 || epoll_ctl(relay.epoll, EPOLL_CTL_ADD, relay.wake, &event) != 0) {
    const char *reason = strerror(errno);
    closeDescriptors();
    return reason;
  }
  relay.stopping = false;
  int error = pthread_create(&relay.thread, NULL, run, NULL);
  if (error != 0) {
    closeDescriptors();
    return strerror(error);
  }
  relay.running = true;
  return NULL;
}

const char *stopThread(void) {
  pthread_mutex_lock(&relay.lock);
  relay.stopping = true;
  pthread_mutex_unlock(&relay.lock);
  wakeThread();
  // A thread that cannot be joined may still run: nothing it uses is freed then.
  int error = pthread_join(relay.thread, NULL);
  if (error != 0) return strerror(error);
  for (command_t *command = relay.commands; command != NULL;) {
    command_t *next = command->next;
    freeCommand(command);
    command = next;
  }
  relay.commands = NULL;
  closeDescriptors();
  relay.running = false;
  return NULL;
}
