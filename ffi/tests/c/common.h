/* Helpers shared by the C test programs. */
#ifndef CRYPTOCORE_TEST_COMMON_H
#define CRYPTOCORE_TEST_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cryptocore.h"

static int failures = 0;

/* A call that must return `want`; prints the library's message otherwise. */
#define EXPECT(call, want)                                                                   \
  do {                                                                                       \
    cryptocore_status got_ = (call);                                                         \
    if (got_ != (cryptocore_status)(want)) {                                                 \
      fprintf(stderr, "%s:%d: %s returned %u, expected %u (%s)\n", __FILE__, __LINE__,       \
              #call, (unsigned)got_, (unsigned)(want), cryptocore_last_error());             \
      failures++;                                                                            \
    }                                                                                        \
  } while (0)

#define OK(call) EXPECT(call, CRYPTOCORE_OK)

#define CHECK(cond)                                                                          \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
      failures++;                                                                            \
    }                                                                                        \
  } while (0)

static int finish(const char *name) {
  if (failures) {
    fprintf(stderr, "%s: %d failure(s)\n", name, failures);
    return 1;
  }
  printf("%s: ok\n", name);
  return 0;
}

static int read_file(const char *path, unsigned char **data, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  *data = malloc(n > 0 ? (size_t)n : 1);
  *len = fread(*data, 1, (size_t)n, f);
  fclose(f);
  return *len == (size_t)n ? 0 : -1;
}

static int write_file(const char *path, const unsigned char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t n = fwrite(data, 1, len, f);
  fclose(f);
  return n == len ? 0 : -1;
}

#endif
