/* The envelope backed by a running KMS sidecar: sidecar ENDPOINT KEY */
#include "common.h"

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: sidecar ENDPOINT KEY\n");
    return 2;
  }
  const char *key = argv[2];
  cryptocore_envelope *env = NULL;
  OK(cryptocore_envelope_from_sidecar(argv[1], NULL, NULL, NULL, NULL, 60000, 1000, &env));
  if (!env) return finish("sidecar");
  const cryptocore_kv ctx[] = {{"tenant", "a"}};
  const char *msg = "through the sidecar";
  cryptocore_buffer ct = {0}, pt = {0}, sentinel = {(uint8_t *)0x1, 1, 0};
  for (int i = 0; i < 20; i++) { /* data keys cached between messages */
    OK(cryptocore_encrypt(env, key, ctx, 1, (const uint8_t *)msg, strlen(msg), &ct));
    OK(cryptocore_decrypt(env, ctx, 1, ct.data, ct.len, &pt));
    CHECK(pt.len == strlen(msg) && memcmp(pt.data, msg, pt.len) == 0);
    cryptocore_buffer_free(&pt);
    if (i < 19) cryptocore_buffer_free(&ct);
  }
  const cryptocore_kv wrong[] = {{"tenant", "b"}};
  EXPECT(cryptocore_decrypt(env, wrong, 1, ct.data, ct.len, &sentinel), CRYPTOCORE_AUTHENTICATION_FAILED);
  cryptocore_buffer rewrapped = {0};
  OK(cryptocore_rewrap(env, ct.data, ct.len, &rewrapped));
  OK(cryptocore_decrypt(env, ctx, 1, rewrapped.data, rewrapped.len, &pt));
  CHECK(pt.len == strlen(msg));
  cryptocore_buffer_free(&pt);
  cryptocore_buffer_free(&rewrapped);
  cryptocore_buffer_free(&ct);

  cryptocore_buffer dk = {0}, wrapped = {0}, dk2 = {0};
  OK(cryptocore_data_key_generate(env, key, &dk, &wrapped));
  OK(cryptocore_data_key_decrypt(env, wrapped.data, wrapped.len, &dk2));
  CHECK(dk.len == 32 && dk2.len == 32 && memcmp(dk.data, dk2.data, 32) == 0);
  cryptocore_buffer_free(&dk);
  cryptocore_buffer_free(&dk2);
  cryptocore_buffer_free(&wrapped);
  /* An unknown key fails (the sidecar answers NOT_FOUND) and writes nothing. */
  CHECK(cryptocore_encrypt(env, "no/such-key", ctx, 1, (const uint8_t *)msg, 1, &sentinel) != CRYPTOCORE_OK);
  CHECK(sentinel.data == (uint8_t *)0x1);
  cryptocore_envelope_free(env);
  return finish("sidecar");
}
