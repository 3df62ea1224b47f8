/*
 * The C ABI as a C program uses it: misuse first (every mistake is an
 * error code), then two users against a real server: login, call, accept,
 * two seconds of tones both ways (their levels in onUserVoiceVolume),
 * hangup; then a callback that calls back into the API and destroys its
 * own instance. Built with -fsanitize=address by tests/c_client.rs, which
 * starts the server and passes: ADDRESS FINGERPRINT SDK_APP_ID SIG_ALICE
 * SIG_BOB SIG_CAROL. Exit 0 when every check held; otherwise the first
 * failure is printed.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "opencalling.h"

#define MAX_EVENTS 512

#define CHECK(condition)                                                      \
    do {                                                                      \
        if (!(condition)) {                                                   \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #condition);                                              \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

/* What one user's callback saw: copies of every JSON it was given. */
typedef struct {
    const char *name;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    char *events[MAX_EVENTS];
    int count;
    int loudest_remote; /* the highest total_volume of onUserVoiceVolume */
    int quality_reports; /* NetworkQuality events, counted apart as volume is */
} User;

static void on_event(void *user_data, const char *json) {
    User *user = user_data;
    pthread_mutex_lock(&user->lock);
    const char *volume = strstr(json, "\"total_volume\":");
    if (volume != NULL) {
        int level = atoi(volume + strlen("\"total_volume\":"));
        if (level > user->loudest_remote) user->loudest_remote = level;
    } else if (strstr(json, "\"NetworkQuality\"") != NULL) {
        /* A periodic report like the volume: its own schedule. */
        user->quality_reports++;
    } else if (user->count < MAX_EVENTS) {
        /* Copied: the JSON lives only during this call. */
        user->events[user->count++] = strdup(json);
    }
    pthread_cond_broadcast(&user->changed);
    pthread_mutex_unlock(&user->lock);
}

/* Waits up to 10 s for an event at or after index *from containing both
 * fragments. Completions and events come from different sources, so
 * within a step they are looked for in any order; `step` moves *from past
 * everything seen so far. */
static void expect(User *user, const int *from, const char *first, const char *second) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    pthread_mutex_lock(&user->lock);
    for (;;) {
        for (int i = *from; i < user->count; i++) {
            if (strstr(user->events[i], first) && (!second || strstr(user->events[i], second))) {
                pthread_mutex_unlock(&user->lock);
                return;
            }
        }
        if (pthread_cond_timedwait(&user->changed, &user->lock, &deadline) != 0) {
            fprintf(stderr, "%s: no event with %s %s; got:\n", user->name, first,
                    second ? second : "");
            for (int i = 0; i < user->count; i++) fprintf(stderr, "  %s\n", user->events[i]);
            exit(1);
        }
    }
}

/* Asserts that the step since *from brought exactly `count` events (volume
 * and network quality reports aside): the ones expected, and nothing else. */
static void exactly(User *user, const int *from, int count) {
    pthread_mutex_lock(&user->lock);
    int seen = user->count - *from;
    if (seen != count) {
        fprintf(stderr, "%s: %d events in this step, %d expected:\n", user->name, seen, count);
        for (int i = *from; i < user->count; i++) fprintf(stderr, "  %s\n", user->events[i]);
        exit(1);
    }
    pthread_mutex_unlock(&user->lock);
}

static void step(User *user, int *from) {
    pthread_mutex_lock(&user->lock);
    *from = user->count;
    pthread_mutex_unlock(&user->lock);
}

static char *completion_of(uint64_t request) {
    static char text[64];
    snprintf(text, sizeof text, "\"request_id\":%llu,", (unsigned long long)request);
    return text;
}

static void init_user(User *user, const char *name) {
    memset(user, 0, sizeof *user);
    user->name = name;
    pthread_mutex_init(&user->lock, NULL);
    pthread_cond_init(&user->changed, NULL);
}

static void free_user(User *user) {
    for (int i = 0; i < user->count; i++) free(user->events[i]);
    pthread_mutex_destroy(&user->lock);
    pthread_cond_destroy(&user->changed);
}

static void misuse(const char *options) {
    OcHandle handle = 0;
    uint64_t request = 0;
    CHECK(oc_calling_create(options, NULL) == OC_ERR_NULL_POINTER);
    CHECK(oc_calling_create("{not json", &handle) == OC_ERR_INVALID_ARGUMENT);
    CHECK(oc_calling_create("{\"input\": \"microphone-of-mars\"}", &handle) == OC_ERR_INVALID_ARGUMENT);
    CHECK(oc_calling_login(424242, 1, "alice", "sig", &request) == OC_ERR_INVALID_HANDLE);
    CHECK(oc_calling_set_mic_mute(0, true) == OC_ERR_INVALID_HANDLE);
    CHECK(oc_calling_create(options, &handle) == OC_OK);
    CHECK(handle != 0);
    CHECK(oc_calling_login(handle, 1, NULL, "sig", &request) == OC_ERR_NULL_POINTER);
    CHECK(oc_calling_login(handle, 1, "alice", "sig", NULL) == OC_ERR_NULL_POINTER);
    CHECK(oc_calling_login(handle, 1, "\xff\xfe", "sig", &request) == OC_ERR_INVALID_ARGUMENT);
    CHECK(oc_calling_call(handle, "bob", 7, 0, &request) == OC_ERR_INVALID_ARGUMENT);
    CHECK(oc_calling_set_options(handle, NULL) == OC_ERR_NULL_POINTER);
    CHECK(oc_calling_set_callback(handle, NULL, NULL) == OC_OK);
    CHECK(oc_calling_destroy(handle) == OC_OK);
    CHECK(oc_calling_destroy(handle) == OC_ERR_INVALID_HANDLE);
    CHECK(oc_calling_accept(handle, &request) == OC_ERR_INVALID_HANDLE);
    CHECK(oc_calling_hangup(handle, &request) == OC_ERR_INVALID_HANDLE);
    CHECK(strlen(oc_result_description(OC_ERR_INVALID_HANDLE)) > 0);
    CHECK(strstr(oc_result_description(2012), "signature") != NULL);
    CHECK(strlen(oc_version()) > 0);
    /* The shared instance: one handle until destroyed. */
    OcHandle shared = 0, again = 0;
    CHECK(oc_calling_shared_instance(options, &shared) == OC_OK);
    CHECK(oc_calling_shared_instance(NULL, &again) == OC_OK);
    CHECK(shared == again);
    CHECK(oc_calling_destroy_shared_instance() == OC_OK);
    CHECK(oc_calling_set_mic_mute(shared, true) == OC_ERR_INVALID_HANDLE);
}

/* Carol's callback calls back into the API, then destroys its own
 * instance from inside the callback. */
typedef struct {
    OcHandle handle;
    pthread_mutex_t lock;
    pthread_cond_t done;
    int destroyed; /* 1 once destroy returned, with its result in `result` */
    int result;
    int reentrant_result;
} Carol;

static void carol_event(void *user_data, const char *json) {
    Carol *carol = user_data;
    if (strstr(json, "\"request\":\"login\"") == NULL) return;
    int reentrant = oc_calling_set_mic_mute(carol->handle, true);
    int result = oc_calling_destroy(carol->handle);
    pthread_mutex_lock(&carol->lock);
    carol->reentrant_result = reentrant;
    carol->result = result;
    carol->destroyed = 1;
    pthread_cond_broadcast(&carol->done);
    pthread_mutex_unlock(&carol->lock);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s ADDRESS FINGERPRINT SDK_APP_ID SIG_ALICE SIG_BOB SIG_CAROL\n", argv[0]);
        return 2;
    }
    const char *address = argv[1], *fingerprint = argv[2];
    uint32_t app = (uint32_t)strtoul(argv[3], NULL, 10);
    char options[512], alice_options[512], bob_options[512];
    snprintf(options, sizeof options,
             "{\"server\": \"%s\", \"fingerprint\": \"%s\", \"input\": \"silence\", \"output\": \"null\"}",
             address, fingerprint);
    snprintf(alice_options, sizeof alice_options,
             "{\"server\": \"%s\", \"fingerprint\": \"%s\", \"input\": \"tone:440\", \"output\": \"null\", "
             "\"voice_volume_interval_ms\": 200}",
             address, fingerprint);
    snprintf(bob_options, sizeof bob_options,
             "{\"server\": \"%s\", \"fingerprint\": \"%s\", \"input\": \"tone:880\", \"output\": \"null\", "
             "\"voice_volume_interval_ms\": 200}",
             address, fingerprint);

    misuse(options);

    User alice, bob;
    init_user(&alice, "alice");
    init_user(&bob, "bob");
    OcHandle a = 0, b = 0;
    CHECK(oc_calling_create(alice_options, &a) == OC_OK);
    CHECK(oc_calling_create(bob_options, &b) == OC_OK);
    CHECK(oc_calling_set_callback(a, on_event, &alice) == OC_OK);
    CHECK(oc_calling_set_callback(b, on_event, &bob) == OC_OK);
    int seen_a = 0, seen_b = 0;
    uint64_t request = 0;

    CHECK(oc_calling_login(a, app, "alice", argv[4], &request) == OC_OK);
    expect(&alice, &seen_a, completion_of(request), "\"code\":0,");
    CHECK(oc_calling_login(b, app, "bob", argv[5], &request) == OC_OK);
    expect(&bob, &seen_b, completion_of(request), "\"code\":0,");
    exactly(&alice, &seen_a, 1);
    exactly(&bob, &seen_b, 1);

    step(&alice, &seen_a);
    step(&bob, &seen_b);
    CHECK(oc_calling_call(a, "bob", 1, 0, &request) == OC_OK);
    expect(&alice, &seen_a, completion_of(request), "\"call_id\":");
    expect(&bob, &seen_b, "\"callback\":\"onInvited\"", "\"sponsor\":\"alice\"");
    CHECK(oc_calling_accept(b, &request) == OC_OK);
    expect(&bob, &seen_b, completion_of(request), "\"code\":0,");
    expect(&alice, &seen_a, "\"callback\":\"onUserEnter\"", "\"bob\"");
    expect(&bob, &seen_b, "\"callback\":\"onUserEnter\"", "\"alice\"");
    expect(&alice, &seen_a, "\"callback\":\"onUserAudioAvailable\"", "\"available\":true,\"user_id\":\"bob\"");
    expect(&bob, &seen_b, "\"callback\":\"onUserAudioAvailable\"", "\"available\":true,\"user_id\":\"alice\"");
    /* alice: the call's completion, bob entering, his audio;
     * bob: the invitation, the accept's completion, alice entering, her audio. */
    exactly(&alice, &seen_a, 3);
    exactly(&bob, &seen_b, 4);

    /* Two seconds of tones both ways. */
    struct timespec two_seconds = {2, 0};
    nanosleep(&two_seconds, NULL);
    pthread_mutex_lock(&alice.lock);
    int alice_heard = alice.loudest_remote;
    pthread_mutex_unlock(&alice.lock);
    pthread_mutex_lock(&bob.lock);
    int bob_heard = bob.loudest_remote;
    pthread_mutex_unlock(&bob.lock);
    fprintf(stderr, "loudest remote level: alice heard %d, bob heard %d\n", alice_heard, bob_heard);
    CHECK(alice_heard >= 20);
    CHECK(bob_heard >= 20);

    /* The call's statistics, and its network quality reports meanwhile. */
    step(&alice, &seen_a);
    CHECK(oc_calling_call_stats(a, &request) == OC_OK);
    expect(&alice, &seen_a, completion_of(request), "\"transport\":\"quic\"");
    expect(&alice, &seen_a, completion_of(request), "\"user_id\":\"bob\"");
    pthread_mutex_lock(&alice.lock);
    CHECK(alice.quality_reports >= 1);
    pthread_mutex_unlock(&alice.lock);

    step(&alice, &seen_a);
    step(&bob, &seen_b);
    CHECK(oc_calling_hangup(a, &request) == OC_OK);
    expect(&alice, &seen_a, completion_of(request), "\"code\":0,");
    expect(&alice, &seen_a, "\"callback\":\"onCallEnd\"", NULL);
    expect(&alice, &seen_a, "\"CallEnded\"", "\"reason\":\"Hangup\"");
    expect(&bob, &seen_b, "\"callback\":\"onUserLeave\"", "\"alice\"");
    expect(&bob, &seen_b, "\"callback\":\"onCallEnd\"", NULL);
    expect(&bob, &seen_b, "\"CallEnded\"", "\"reason\":\"Hangup\"");
    exactly(&alice, &seen_a, 3);
    exactly(&bob, &seen_b, 3);

    /* Re-entrancy: carol's callback calls in and destroys its instance. */
    Carol carol = {0};
    pthread_mutex_init(&carol.lock, NULL);
    pthread_cond_init(&carol.done, NULL);
    CHECK(oc_calling_create(options, &carol.handle) == OC_OK);
    CHECK(oc_calling_set_callback(carol.handle, carol_event, &carol) == OC_OK);
    CHECK(oc_calling_login(carol.handle, app, "carol", argv[6], &request) == OC_OK);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    pthread_mutex_lock(&carol.lock);
    while (!carol.destroyed) {
        CHECK(pthread_cond_timedwait(&carol.done, &carol.lock, &deadline) == 0);
    }
    pthread_mutex_unlock(&carol.lock);
    CHECK(carol.reentrant_result == OC_OK);
    CHECK(carol.result == OC_OK);
    CHECK(oc_calling_set_mic_mute(carol.handle, false) == OC_ERR_INVALID_HANDLE);

    CHECK(oc_calling_destroy(a) == OC_OK);
    CHECK(oc_calling_destroy(b) == OC_OK);
    free_user(&alice);
    free_user(&bob);
    pthread_mutex_destroy(&carol.lock);
    pthread_cond_destroy(&carol.done);
    fprintf(stderr, "every check held\n");
    return 0;
}
