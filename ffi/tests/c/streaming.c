/* Streaming encryptor/decryptor over a large input pushed in uneven pieces; truncation
   and use after finish. streaming MEBIBYTES */
#include "common.h"

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 64;
  cryptocore_keyring *ring = NULL;
  cryptocore_envelope *env = NULL;
  OK(cryptocore_keyring_new(&ring));
  OK(cryptocore_keyring_create_key(ring, "big/files", NULL));
  OK(cryptocore_envelope_from_keyring(ring, &env));
  const cryptocore_kv ctx[] = {{"file", "big.bin"}};

  cryptocore_encryptor *enc = NULL;
  cryptocore_decryptor *dec = NULL;
  OK(cryptocore_encryptor_new(env, "big/files", ctx, 1, &enc));
  OK(cryptocore_decryptor_new(env, ctx, 1, &dec));

  /* Plaintext generated on the fly; ciphertext fed straight into the decryptor, so
     neither side is ever held whole. Checksums compare the two ends. */
  size_t total = mib << 20, done = 0, step = 1;
  uint8_t *chunk = malloc(1 << 20);
  uint64_t sum_in = 1469598103934665603ull, sum_out = sum_in;
  size_t ct_bytes = 0, pt_bytes = 0;
  cryptocore_buffer out = {0}, plain = {0};
  while (done < total) {
    size_t n = step % (1 << 20) + 1;
    if (n > total - done) n = total - done;
    for (size_t i = 0; i < n; i++) chunk[i] = (uint8_t)((done + i) * 2654435761u >> 13);
    sum_in = fnv(sum_in, chunk, n);
    OK(cryptocore_encryptor_update(enc, chunk, n, &out));
    ct_bytes += out.len;
    OK(cryptocore_decryptor_update(dec, out.data, out.len, &plain));
    sum_out = fnv(sum_out, plain.data, plain.len);
    pt_bytes += plain.len;
    cryptocore_buffer_free(&out);
    cryptocore_buffer_free(&plain);
    done += n;
    step = step * 7 + 13;
  }
  OK(cryptocore_encryptor_finish(enc, &out));
  ct_bytes += out.len;
  OK(cryptocore_decryptor_update(dec, out.data, out.len, &plain));
  sum_out = fnv(sum_out, plain.data, plain.len);
  pt_bytes += plain.len;
  cryptocore_buffer_free(&plain);
  /* Keep the last piece to test truncation below. */
  cryptocore_buffer last = out;
  OK(cryptocore_decryptor_finish(dec, &plain));
  sum_out = fnv(sum_out, plain.data, plain.len);
  pt_bytes += plain.len;
  cryptocore_buffer_free(&plain);
  CHECK(pt_bytes == total);
  CHECK(sum_in == sum_out);
  CHECK(ct_bytes > total);

  /* After finish: INVALID_STATE. */
  cryptocore_buffer sentinel = {(uint8_t *)0x1, 7, 0};
  EXPECT(cryptocore_encryptor_update(enc, chunk, 1, &sentinel), CRYPTOCORE_INVALID_STATE);
  EXPECT(cryptocore_encryptor_finish(enc, &sentinel), CRYPTOCORE_INVALID_STATE);
  EXPECT(cryptocore_decryptor_update(dec, chunk, 1, &sentinel), CRYPTOCORE_INVALID_STATE);
  CHECK(sentinel.data == (uint8_t *)0x1);
  cryptocore_encryptor_free(enc);
  cryptocore_decryptor_free(dec);

  /* A small message cut short: finish fails, nothing released for the cut segment. */
  OK(cryptocore_encryptor_new(env, "big/files", ctx, 1, &enc));
  cryptocore_buffer a = {0}, b = {0};
  OK(cryptocore_encryptor_update(enc, chunk, 1000, &a));
  OK(cryptocore_encryptor_finish(enc, &b));
  OK(cryptocore_decryptor_new(env, ctx, 1, &dec));
  OK(cryptocore_decryptor_update(dec, a.data, a.len, &plain));
  cryptocore_buffer_free(&plain);
  OK(cryptocore_decryptor_update(dec, b.data, b.len - 1, &plain));
  CHECK(plain.len == 0);
  EXPECT(cryptocore_decryptor_finish(dec, &sentinel), CRYPTOCORE_AUTHENTICATION_FAILED);
  CHECK(sentinel.data == (uint8_t *)0x1);
  cryptocore_decryptor_free(dec);
  /* Wrong context: refused at the header, before any plaintext. */
  const cryptocore_kv wrong[] = {{"file", "other.bin"}};
  OK(cryptocore_decryptor_new(env, wrong, 1, &dec));
  EXPECT(cryptocore_decryptor_update(dec, a.data, a.len, &sentinel), CRYPTOCORE_AUTHENTICATION_FAILED);
  cryptocore_decryptor_free(dec);
  /* An abandoned encryptor is freed without finishing. */
  cryptocore_encryptor_free(enc);
  OK(cryptocore_encryptor_new(env, "big/files", ctx, 1, &enc));
  cryptocore_encryptor_free(enc);

  cryptocore_buffer_free(&a);
  cryptocore_buffer_free(&b);
  cryptocore_buffer_free(&last);
  free(chunk);
  cryptocore_envelope_free(env);
  cryptocore_keyring_free(ring);
  return finish("streaming");
}
