/* One-shot encrypt/decrypt, wrong context, tampering, rotation and rewrap, data keys,
   hazmat AES-GCM, and interop with the Rust API through files:
   roundtrip KEYRING_FILE RUST_CIPHERTEXT C_CIPHERTEXT_OUT */
#include "common.h"

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: roundtrip KEYRING RUST_CT C_CT_OUT\n");
    return 2;
  }
  CHECK(strlen(cryptocore_version()) > 0);

  cryptocore_keyring *ring = NULL;
  OK(cryptocore_keyring_open(argv[1], &ring));
  cryptocore_envelope *env = NULL;
  OK(cryptocore_envelope_from_keyring(ring, &env));

  const cryptocore_kv ctx[] = {{"tenant", "a"}, {"purpose", "test"}};
  const cryptocore_kv other[] = {{"tenant", "b"}, {"purpose", "test"}};
  const char *msg = "078-05-1120";

  /* Round trip. */
  cryptocore_buffer ct = {0}, pt = {0};
  OK(cryptocore_encrypt(env, "tenant-a/files", ctx, 2, (const uint8_t *)msg, strlen(msg), &ct));
  CHECK(ct.len > strlen(msg) && ct.data != NULL);
  OK(cryptocore_decrypt(env, ctx, 2, ct.data, ct.len, &pt));
  CHECK(pt.len == strlen(msg) && memcmp(pt.data, msg, pt.len) == 0);
  cryptocore_buffer_free(&pt);

  /* Wrong context and tampering fail, and leave the output untouched. */
  cryptocore_buffer sentinel = {(uint8_t *)0x1, 12345, 0};
  EXPECT(cryptocore_decrypt(env, other, 2, ct.data, ct.len, &sentinel), CRYPTOCORE_AUTHENTICATION_FAILED);
  CHECK(sentinel.data == (uint8_t *)0x1 && sentinel.len == 12345);
  CHECK(strlen(cryptocore_last_error()) > 0);
  ct.data[ct.len - 1] ^= 1;
  EXPECT(cryptocore_decrypt(env, ctx, 2, ct.data, ct.len, &sentinel), CRYPTOCORE_AUTHENTICATION_FAILED);
  ct.data[ct.len - 1] ^= 1;
  EXPECT(cryptocore_decrypt(env, ctx, 2, ct.data, ct.len - 1, &sentinel), CRYPTOCORE_AUTHENTICATION_FAILED);
  EXPECT(cryptocore_decrypt(env, ctx, 2, (const uint8_t *)"garbage", 7, &sentinel),
         CRYPTOCORE_INVALID_ARGUMENT);
  CHECK(sentinel.data == (uint8_t *)0x1);
  EXPECT(cryptocore_encrypt(env, "no/such-key", ctx, 2, (const uint8_t *)msg, 1, &sentinel), CRYPTOCORE_KEY_ERROR);
  EXPECT(cryptocore_encrypt(env, "../bad", ctx, 2, (const uint8_t *)msg, 1, &sentinel), CRYPTOCORE_INVALID_ARGUMENT);

  /* Rotation and rewrap: the old ciphertext still opens; the rewrapped one too. */
  uint32_t version = 0;
  OK(cryptocore_keyring_rotate_key(ring, "tenant-a/files", &version));
  CHECK(version == 2);
  cryptocore_buffer rewrapped = {0};
  OK(cryptocore_rewrap(env, ct.data, ct.len, &rewrapped));
  CHECK(rewrapped.len == ct.len);
  OK(cryptocore_decrypt(env, ctx, 2, rewrapped.data, rewrapped.len, &pt));
  CHECK(pt.len == strlen(msg) && memcmp(pt.data, msg, pt.len) == 0);
  cryptocore_buffer_free(&pt);
  cryptocore_buffer_free(&rewrapped);
  cryptocore_buffer_free(&ct);

  /* Data keys. */
  cryptocore_buffer dk = {0}, wrapped = {0}, dk2 = {0};
  OK(cryptocore_data_key_generate(env, "tenant-a/files", &dk, &wrapped));
  CHECK(dk.len == 32 && wrapped.len > 32);
  OK(cryptocore_data_key_decrypt(env, wrapped.data, wrapped.len, &dk2));
  CHECK(dk2.len == 32 && memcmp(dk.data, dk2.data, 32) == 0);
  wrapped.data[wrapped.len - 1] ^= 1;
  EXPECT(cryptocore_data_key_decrypt(env, wrapped.data, wrapped.len, &sentinel), CRYPTOCORE_AUTHENTICATION_FAILED);
  EXPECT(cryptocore_data_key_decrypt(env, wrapped.data, 3, &sentinel), CRYPTOCORE_INVALID_ARGUMENT);
  cryptocore_buffer_free(&dk);
  cryptocore_buffer_free(&dk2);
  cryptocore_buffer_free(&wrapped);

  /* hazmat AES-256-GCM (NIST-style all-zero key and nonce, empty plaintext: tag known). */
  uint8_t key[32] = {0}, nonce[12] = {0};
  cryptocore_buffer sealed = {0}, opened = {0};
  OK(cryptocore_hazmat_aes256gcm_seal(key, 32, nonce, 12, NULL, 0, NULL, 0, &sealed));
  static const uint8_t tag[16] = {0x53, 0x0f, 0x8a, 0xfb, 0xc7, 0x45, 0x36, 0xb9,
                                  0xa9, 0x63, 0xb4, 0xf1, 0xc4, 0xcb, 0x73, 0x8b};
  CHECK(sealed.len == 16 && memcmp(sealed.data, tag, 16) == 0);
  OK(cryptocore_hazmat_aes256gcm_open(key, 32, nonce, 12, NULL, 0, sealed.data, sealed.len, &opened));
  CHECK(opened.len == 0);
  sealed.data[0] ^= 1;
  EXPECT(cryptocore_hazmat_aes256gcm_open(key, 32, nonce, 12, NULL, 0, sealed.data, sealed.len, &sentinel),
         CRYPTOCORE_AUTHENTICATION_FAILED);
  EXPECT(cryptocore_hazmat_aes256gcm_seal(key, 31, nonce, 12, NULL, 0, NULL, 0, &sentinel),
         CRYPTOCORE_INVALID_ARGUMENT);
  cryptocore_buffer_free(&sealed);

  /* Interop: a message sealed by the Rust API opens here; ours is written for Rust. */
  {
    unsigned char *rust_ct = NULL;
    size_t rust_len = 0;
    CHECK(read_file(argv[2], &rust_ct, &rust_len) == 0);
    OK(cryptocore_decrypt(env, ctx, 2, rust_ct, rust_len, &pt));
    const char *want = "sealed by the Rust API";
    CHECK(pt.len == strlen(want) && memcmp(pt.data, want, pt.len) == 0);
    cryptocore_buffer_free(&pt);
    free(rust_ct);
  }
  const char *mine = "sealed by the C API";
  OK(cryptocore_encrypt(env, "tenant-a/files", ctx, 2, (const uint8_t *)mine, strlen(mine), &ct));
  CHECK(write_file(argv[3], ct.data, ct.len) == 0);
  cryptocore_buffer_free(&ct);

  cryptocore_envelope_free(env);
  cryptocore_keyring_free(ring);
  return finish("roundtrip");
}
