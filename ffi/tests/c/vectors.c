/* The published envelope vectors (crypto-core/tests/vectors/envelope-v1.json) opened
   through the C API: every valid vector opens, one-shot and streamed in 7-byte pieces,
   to its plaintext; every invalid one fails with the status the Rust test expects.
   KEKs are imported with cryptocore_keyring_import_key / _import_version, destroyed
   versions shredded with cryptocore_keyring_destroy_version, and each vector's keyrings
   combined with cryptocore_envelope_from_keyrings under their provider ids.

   The test converts the JSON into lines (hex fields, "-" for empty):
     vector NAME EXPECTED_STATUS
     key PROVIDER_ID NAME
     ver VERSION MATERIAL_HEX|destroyed
     destroy VERSION            (after all versions of the key)
     ctx KEY_HEX VALUE_HEX
     ct CIPHERTEXT_HEX
     pt PLAINTEXT_HEX
     end
   usage: vectors FILE */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#define MAX_KEYS 4
#define MAX_CTX 16

static int unhex(const char *s, unsigned char **out, size_t *len) {
  if (strcmp(s, "-") == 0) {
    *out = calloc(1, 1); /* "" */
    *len = 0;
    return *out ? 0 : -1;
  }
  size_t n = strlen(s);
  if (n % 2) return -1;
  *out = malloc(n / 2 + 1);
  if (!*out) return -1;
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
    (*out)[i] = (unsigned char)v;
  }
  (*out)[n / 2] = 0; /* so that strings decode NUL-terminated */
  *len = n / 2;
  return 0;
}

struct vec {
  char name[128];
  unsigned expected;
  int nkeys;
  char provider[MAX_KEYS][65];
  char key_name[MAX_KEYS][256];
  cryptocore_keyring *rings[MAX_KEYS];
  int nctx;
  unsigned char *ctx_k[MAX_CTX], *ctx_v[MAX_CTX];
  unsigned char *ct, *pt;
  size_t ct_len, pt_len;
};

static void clear(struct vec *v) {
  for (int i = 0; i < v->nkeys; i++) cryptocore_keyring_free(v->rings[i]);
  for (int i = 0; i < v->nctx; i++) {
    free(v->ctx_k[i]);
    free(v->ctx_v[i]);
  }
  free(v->ct);
  free(v->pt);
  memset(v, 0, sizeof *v);
}

/* Opens the vector one-shot and streamed; counts failures. */
static void check(struct vec *v, cryptocore_envelope *env) {
  cryptocore_kv ctx[MAX_CTX];
  for (int i = 0; i < v->nctx; i++) {
    ctx[i].key = (const char *)v->ctx_k[i];
    ctx[i].value = (const char *)v->ctx_v[i];
  }
  cryptocore_buffer pt = {0};
  cryptocore_status st = cryptocore_decrypt(env, v->nctx ? ctx : NULL, (size_t)v->nctx, v->ct, v->ct_len, &pt);
  if (st != v->expected) {
    fprintf(stderr, "%s: one-shot status %u, expected %u (%s)\n", v->name, (unsigned)st, v->expected,
            cryptocore_last_error());
    failures++;
  } else if (st == CRYPTOCORE_OK && (pt.len != v->pt_len || (pt.len && memcmp(pt.data, v->pt, pt.len)))) {
    fprintf(stderr, "%s: one-shot plaintext differs\n", v->name);
    failures++;
  }
  cryptocore_buffer_free(&pt);

  /* Streamed in 7-byte pieces: valid vectors give the same plaintext, invalid ones fail
     at some update or at finish. */
  cryptocore_decryptor *d = NULL;
  OK(cryptocore_decryptor_new(env, v->nctx ? ctx : NULL, (size_t)v->nctx, &d));
  unsigned char *got = malloc(v->ct_len + 1);
  size_t got_len = 0;
  cryptocore_status sst = CRYPTOCORE_OK;
  for (size_t off = 0; off < v->ct_len && sst == CRYPTOCORE_OK; off += 7) {
    size_t n = v->ct_len - off < 7 ? v->ct_len - off : 7;
    cryptocore_buffer part = {0};
    sst = cryptocore_decryptor_update(d, v->ct + off, n, &part);
    if (sst == CRYPTOCORE_OK && part.len) {
      memcpy(got + got_len, part.data, part.len);
      got_len += part.len;
    }
    cryptocore_buffer_free(&part);
  }
  if (sst == CRYPTOCORE_OK) {
    cryptocore_buffer part = {0};
    sst = cryptocore_decryptor_finish(d, &part);
    if (sst == CRYPTOCORE_OK && part.len) {
      memcpy(got + got_len, part.data, part.len);
      got_len += part.len;
    }
    cryptocore_buffer_free(&part);
  }
  if (v->expected == CRYPTOCORE_OK) {
    if (sst != CRYPTOCORE_OK || got_len != v->pt_len || (got_len && memcmp(got, v->pt, got_len))) {
      fprintf(stderr, "%s: streamed open failed or differs (status %u: %s)\n", v->name, (unsigned)sst,
              cryptocore_last_error());
      failures++;
    }
  } else if (sst == CRYPTOCORE_OK) {
    fprintf(stderr, "%s: invalid vector streamed without error\n", v->name);
    failures++;
  }
  free(got);
  cryptocore_decryptor_free(d);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: vectors FILE\n");
    return 2;
  }
  FILE *f = fopen(argv[1], "r");
  if (!f) {
    perror(argv[1]);
    return 2;
  }
  char *line = NULL;
  size_t cap = 0;
  struct vec v;
  memset(&v, 0, sizeof v);
  int count = 0;
  while (getline(&line, &cap, f) > 0) {
    line[strcspn(line, "\n")] = 0;
    char *tag = strtok(line, " ");
    if (!tag) continue;
    if (strcmp(tag, "vector") == 0) {
      clear(&v);
      snprintf(v.name, sizeof v.name, "%s", strtok(NULL, " "));
      v.expected = (unsigned)strtoul(strtok(NULL, " "), NULL, 10);
    } else if (strcmp(tag, "key") == 0) {
      CHECK(v.nkeys < MAX_KEYS);
      snprintf(v.provider[v.nkeys], 65, "%s", strtok(NULL, " "));
      snprintf(v.key_name[v.nkeys], 256, "%s", strtok(NULL, " "));
      OK(cryptocore_keyring_new(&v.rings[v.nkeys]));
      v.nkeys++;
    } else if (strcmp(tag, "ver") == 0) {
      int k = v.nkeys - 1;
      unsigned version = (unsigned)strtoul(strtok(NULL, " "), NULL, 10);
      const char *m = strtok(NULL, " ");
      int destroyed = strcmp(m, "destroyed") == 0;
      unsigned char random_material[32];
      unsigned char *material = random_material;
      size_t mlen = 32;
      if (destroyed) {
        /* The material was shredded; any bytes do until it is destroyed below. */
        for (int i = 0; i < 32; i++) random_material[i] = (unsigned char)(i * 7 + version);
      } else {
        CHECK(unhex(m, &material, &mlen) == 0);
      }
      if (version == 1) {
        OK(cryptocore_keyring_import_key(v.rings[k], v.key_name[k], material, mlen));
      } else {
        uint32_t got = 0;
        OK(cryptocore_keyring_import_version(v.rings[k], v.key_name[k], material, mlen, &got));
        CHECK(got == version);
      }
      if (!destroyed) free(material); /* shredded by a later "destroy" line */
    } else if (strcmp(tag, "ctx") == 0) {
      size_t l;
      CHECK(v.nctx < MAX_CTX);
      CHECK(unhex(strtok(NULL, " "), &v.ctx_k[v.nctx], &l) == 0);
      CHECK(unhex(strtok(NULL, " "), &v.ctx_v[v.nctx], &l) == 0);
      v.nctx++;
    } else if (strcmp(tag, "destroy") == 0) {
      int k = v.nkeys - 1;
      unsigned version = (unsigned)strtoul(strtok(NULL, " "), NULL, 10);
      OK(cryptocore_keyring_destroy_version(v.rings[k], v.key_name[k], version));
    } else if (strcmp(tag, "ct") == 0) {
      CHECK(unhex(strtok(NULL, " "), &v.ct, &v.ct_len) == 0);
    } else if (strcmp(tag, "pt") == 0) {
      CHECK(unhex(strtok(NULL, " "), &v.pt, &v.pt_len) == 0);
    } else if (strcmp(tag, "end") == 0) {
      cryptocore_keyring_member members[MAX_KEYS];
      for (int i = 0; i < v.nkeys; i++) {
        members[i].keyring = v.rings[i];
        members[i].provider_id = v.provider[i];
        members[i].fixed_key_name = NULL;
      }
      cryptocore_envelope *env = NULL;
      OK(cryptocore_envelope_from_keyrings(members, (size_t)v.nkeys, &env));
      if (env) check(&v, env);
      cryptocore_envelope_free(env);
      count++;
    }
  }
  free(line);
  fclose(f);
  clear(&v);
  printf("vectors: %d checked\n", count);
  CHECK(count >= 40);
  return finish("vectors");
}
