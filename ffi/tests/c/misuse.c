/* NULL arguments, zero lengths, and the frees the API promises to tolerate. */
#include "common.h"

int main(void) {
  cryptocore_keyring *ring = NULL;
  cryptocore_envelope *env = NULL;
  cryptocore_buffer out = {0}, sentinel = {(uint8_t *)0x1, 3, 0};
  const cryptocore_kv ctx[] = {{"k", "v"}};

  EXPECT(cryptocore_keyring_new(NULL), CRYPTOCORE_NULL_ARGUMENT);
  CHECK(strstr(cryptocore_last_error(), "NULL") != NULL);
  OK(cryptocore_keyring_new(&ring));
  EXPECT(cryptocore_keyring_create_key(NULL, "k", NULL), CRYPTOCORE_NULL_ARGUMENT);
  EXPECT(cryptocore_keyring_create_key(ring, NULL, NULL), CRYPTOCORE_NULL_ARGUMENT);
  OK(cryptocore_keyring_create_key(ring, "k", NULL));
  EXPECT(cryptocore_keyring_create_key(ring, "k", NULL), CRYPTOCORE_KEY_ERROR);
  EXPECT(cryptocore_keyring_import_key(ring, "imported", (const uint8_t *)"short", 5), CRYPTOCORE_INVALID_ARGUMENT);
  uint8_t material[32] = {1, 2, 3};
  OK(cryptocore_keyring_import_key(ring, "imported", material, 32));
  EXPECT(cryptocore_keyring_open("/nonexistent-dir/x/keyring.json", &ring), CRYPTOCORE_IO_ERROR);
  EXPECT(cryptocore_envelope_from_keyring(NULL, &env), CRYPTOCORE_NULL_ARGUMENT);
  EXPECT(cryptocore_envelope_from_keyring(ring, NULL), CRYPTOCORE_NULL_ARGUMENT);
  OK(cryptocore_envelope_from_keyring(ring, &env));

  /* Key history and shredding: the primary cannot be destroyed, an older version can,
     once; imported versions must be 32 bytes. */
  uint32_t version = 0;
  EXPECT(cryptocore_keyring_import_version(ring, "imported", material, 31, &version), CRYPTOCORE_INVALID_ARGUMENT);
  EXPECT(cryptocore_keyring_import_version(ring, "absent", material, 32, &version), CRYPTOCORE_KEY_ERROR);
  OK(cryptocore_keyring_import_version(ring, "imported", material, 32, &version));
  CHECK(version == 2);
  EXPECT(cryptocore_keyring_destroy_version(ring, "imported", 2), CRYPTOCORE_KEY_ERROR);
  EXPECT(cryptocore_keyring_destroy_version(ring, "imported", 9), CRYPTOCORE_KEY_ERROR);
  EXPECT(cryptocore_keyring_destroy_version(NULL, "imported", 1), CRYPTOCORE_NULL_ARGUMENT);
  OK(cryptocore_keyring_destroy_version(ring, "imported", 1));

  /* Multi-keyring envelopes: NULLs, no members, the same provider id twice, a bad id. */
  cryptocore_envelope *multi = NULL;
  cryptocore_keyring_member members[2] = {{ring, "local", NULL}, {ring, "local", "imported"}};
  EXPECT(cryptocore_envelope_from_keyrings(NULL, 1, &multi), CRYPTOCORE_NULL_ARGUMENT);
  EXPECT(cryptocore_envelope_from_keyrings(members, 0, &multi), CRYPTOCORE_INVALID_ARGUMENT);
  EXPECT(cryptocore_envelope_from_keyrings(members, 2, &multi), CRYPTOCORE_INVALID_ARGUMENT);
  members[1].provider_id = "bad id with spaces\x01";
  EXPECT(cryptocore_envelope_from_keyrings(members, 2, &multi), CRYPTOCORE_INVALID_ARGUMENT);
  members[1].provider_id = NULL;
  EXPECT(cryptocore_envelope_from_keyrings(members, 2, &multi), CRYPTOCORE_NULL_ARGUMENT);
  CHECK(multi == NULL);
  /* A recovery member with a fixed key: sealing wraps under both. */
  members[1].provider_id = "local-dr";
  OK(cryptocore_envelope_from_keyrings(members, 2, &multi));
  cryptocore_buffer sealed = {0}, opened = {0};
  OK(cryptocore_encrypt(multi, "k", ctx, 1, (const uint8_t *)"dr", 2, &sealed));
  OK(cryptocore_decrypt(multi, ctx, 1, sealed.data, sealed.len, &opened));
  CHECK(opened.len == 2 && memcmp(opened.data, "dr", 2) == 0);
  cryptocore_buffer_free(&opened);
  cryptocore_buffer_free(&sealed);
  cryptocore_envelope_free(multi);

  /* NULL buffers with a non-zero length; a NULL context with pairs claimed. */
  EXPECT(cryptocore_encrypt(env, "k", ctx, 1, NULL, 5, &sentinel), CRYPTOCORE_NULL_ARGUMENT);
  EXPECT(cryptocore_encrypt(env, "k", NULL, 1, (const uint8_t *)"x", 1, &sentinel), CRYPTOCORE_NULL_ARGUMENT);
  EXPECT(cryptocore_encrypt(env, "k", ctx, 1, (const uint8_t *)"x", 1, NULL), CRYPTOCORE_NULL_ARGUMENT);
  EXPECT(cryptocore_decrypt(env, ctx, 1, NULL, 9, &sentinel), CRYPTOCORE_NULL_ARGUMENT);
  const cryptocore_kv null_value[] = {{"k", NULL}};
  EXPECT(cryptocore_encrypt(env, "k", null_value, 1, (const uint8_t *)"x", 1, &sentinel), CRYPTOCORE_NULL_ARGUMENT);
  const cryptocore_kv bad_utf8[] = {{"k", "\xff\xfe"}};
  EXPECT(cryptocore_encrypt(env, "k", bad_utf8, 1, (const uint8_t *)"x", 1, &sentinel), CRYPTOCORE_INVALID_ARGUMENT);
  EXPECT(cryptocore_encrypt(NULL, "k", ctx, 1, (const uint8_t *)"x", 1, &sentinel), CRYPTOCORE_NULL_ARGUMENT);
  /* A key given twice is ambiguous: refused, never "last one wins". Empty keys too. */
  const cryptocore_kv twice[] = {{"k", "v"}, {"j", "w"}, {"k", "v"}};
  EXPECT(cryptocore_encrypt(env, "k", twice, 3, (const uint8_t *)"x", 1, &sentinel), CRYPTOCORE_INVALID_ARGUMENT);
  EXPECT(cryptocore_decrypt(env, twice, 3, (const uint8_t *)"x", 1, &sentinel), CRYPTOCORE_INVALID_ARGUMENT);
  const cryptocore_kv empty_key[] = {{"", "v"}};
  EXPECT(cryptocore_encrypt(env, "k", empty_key, 1, (const uint8_t *)"x", 1, &sentinel), CRYPTOCORE_INVALID_ARGUMENT);
  CHECK(sentinel.data == (uint8_t *)0x1 && sentinel.len == 3);

  /* Zero lengths: an empty plaintext and an empty context are fine. */
  OK(cryptocore_encrypt(env, "k", NULL, 0, NULL, 0, &out));
  cryptocore_buffer pt = {(uint8_t *)0x1, 1, 0};
  OK(cryptocore_decrypt(env, NULL, 0, out.data, out.len, &pt));
  CHECK(pt.len == 0 && pt.data == NULL);
  EXPECT(cryptocore_decrypt(env, NULL, 0, NULL, 0, &sentinel), CRYPTOCORE_AUTHENTICATION_FAILED);

  /* Freeing a buffer twice, or an empty one, or NULL, is harmless: free resets it. */
  cryptocore_buffer_free(&out);
  CHECK(out.data == NULL && out.len == 0);
  cryptocore_buffer_free(&out);
  cryptocore_buffer_free(&pt);
  cryptocore_buffer_free(NULL);
  /* Freeing NULL handles is a no-op. */
  cryptocore_keyring_free(NULL);
  cryptocore_envelope_free(NULL);
  cryptocore_encryptor_free(NULL);
  cryptocore_decryptor_free(NULL);
  /* Streaming with NULL handles. */
  EXPECT(cryptocore_encryptor_update(NULL, (const uint8_t *)"x", 1, &sentinel), CRYPTOCORE_NULL_ARGUMENT);
  EXPECT(cryptocore_decryptor_finish(NULL, &sentinel), CRYPTOCORE_NULL_ARGUMENT);
  /* A sidecar that is not there. */
  cryptocore_envelope *remote = NULL;
  EXPECT(cryptocore_envelope_from_sidecar("unix:///nonexistent/kms.sock", NULL, NULL, NULL, NULL, 0, 0, &remote),
         CRYPTOCORE_UNAVAILABLE);
  EXPECT(cryptocore_envelope_from_sidecar("ftp://x", NULL, NULL, NULL, NULL, 0, 0, &remote), CRYPTOCORE_UNAVAILABLE);
  CHECK(remote == NULL);

  /* The keyring can go first: the envelope keeps its own reference. */
  cryptocore_keyring_free(ring);
  OK(cryptocore_encrypt(env, "k", ctx, 1, (const uint8_t *)"x", 1, &out));
  cryptocore_buffer_free(&out);
  cryptocore_envelope_free(env);
  return finish("misuse");
}
