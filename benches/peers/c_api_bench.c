/* c_api_bench: the `cryptocore-c-api` row of the peer harness (benches/peers/). Seal and
   open throughput of the C ABI as a C caller gets it: this program, built with gcc -O2
   against ffi/include/cryptocore.h and linked against libcryptocore.so, on one thread.
   Writes JSON lines (schema: benches/peers/report.py) to --out or PEERS_OUT.

   What runs: cryptocore_keyring_new + cryptocore_keyring_create_key("peers/bench") +
   cryptocore_envelope_from_keyring, then cryptocore_encrypt / cryptocore_decrypt with the
   context of peers.py (tenant=acme, purpose=peer-bench) as two cryptocore_kv pairs: the
   same messages as the `cryptocore-envelope` row of peers-rust (stream form, default
   segments, a fresh data key per message). Each output is a library-owned
   cryptocore_buffer, freed with cryptocore_buffer_free outside the timer.

   The method is peers-rust's (benches/src/bin/peers-rust.rs: `Method`, `sample`,
   `measure`), step for step: fresh random inputs per sample (getrandom(2)) made outside
   the timer; one checked seal and open before anything counts; warm-up that estimates the
   time per operation; batches so that a sample lasts at least 5 ms (batch x size at most
   64 MiB); samples until at least 1 s is timed and at least 5 samples (3 from 64 MiB), at
   most 120 s of wall clock per cell; the median per operation; every timed output checked
   outside the timer (seal outputs decrypted and compared, open outputs compared);
   clock_gettime(CLOCK_MONOTONIC). GB/s = 10^9 bytes of plaintext per second.

   Exit status: 0 if every cell ran and every check passed; 1 on a failed check, a library
   error or an I/O error (each said on stderr); 2 on a bad command line.

   Build and run (benches/peers/run.sh does both, into target/peers/):
     cargo build --release -p cryptocore-ffi --lib
     gcc -std=c11 -O2 -Wall -Wextra -Iffi/include benches/peers/c_api_bench.c \
         -Ltarget/release -Wl,-rpath,$PWD/target/release -lcryptocore -o target/peers/c_api_bench
     taskset -c 0 target/peers/c_api_bench --quick     # writes target/peers/results-c.jsonl
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cryptocore.h"

#define PROG "c_api_bench"
#define IMPL "cryptocore-c-api"
#define SOURCE "benches/peers/c_api_bench.c"

#define KIB ((size_t)1024)
#define MIB (1024 * KIB)

/* peers-rust's KEY_NAME and CONTEXT. */
static const char KEY_NAME[] = "peers/bench";
static const cryptocore_kv CONTEXT[] = {{"tenant", "acme"}, {"purpose", "peer-bench"}};
#define CONTEXT_LEN (sizeof CONTEXT / sizeof CONTEXT[0])

/* What the row runs (the JSON lines' note). */
static const char NOTE[] =
    "the C ABI from a C program (" SOURCE ", gcc -O2, linked against libcryptocore.so): cryptocore_keyring_new + "
    "cryptocore_keyring_create_key + cryptocore_envelope_from_keyring, then cryptocore_encrypt / cryptocore_decrypt, "
    "i.e. Envelope::seal / Envelope::open over LocalProvider (stream form, the library's default 64 KiB segments, no "
    "data-key cache: a fresh data key per message), context as two cryptocore_kv pairs; output in a library-owned "
    "cryptocore_buffer per message, freed (zeroized) with cryptocore_buffer_free outside the timer";

static const size_t SIZES_FULL[] = {KIB, MIB, 64 * MIB};
static const size_t SIZES_QUICK[] = {KIB, MIB};

#if defined(__clang__)
#define COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define COMPILER "gcc " __VERSION__
#else
#define COMPILER "an unknown C compiler"
#endif

/* --------------------------------------------------------------------------- errors */

/* The message of the last failure, and whether it was a failed check (reported as
   CHECK FAILED, like peers-rust's `CheckFailed`) rather than an error. */
static char err_msg[4096];
static bool err_is_check;

static int fail(bool check, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(bool check, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err_msg, sizeof err_msg, fmt, ap);
  va_end(ap);
  err_is_check = check;
  return -1;
}

/* A formatted string on the heap, or NULL when out of memory (asprintf's *strp is
   undefined then). */
static char *fmt_alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_alloc(const char *fmt, ...) {
  char *s = NULL;
  va_list ap;
  va_start(ap, fmt);
  int n = vasprintf(&s, fmt, ap);
  va_end(ap);
  return n < 0 ? NULL : s;
}

static const char *status_name(cryptocore_status s) {
  switch (s) {
    case CRYPTOCORE_OK: return "CRYPTOCORE_OK";
    case CRYPTOCORE_NULL_ARGUMENT: return "CRYPTOCORE_NULL_ARGUMENT";
    case CRYPTOCORE_INVALID_ARGUMENT: return "CRYPTOCORE_INVALID_ARGUMENT";
    case CRYPTOCORE_AUTHENTICATION_FAILED: return "CRYPTOCORE_AUTHENTICATION_FAILED";
    case CRYPTOCORE_KEY_ERROR: return "CRYPTOCORE_KEY_ERROR";
    case CRYPTOCORE_UNAVAILABLE: return "CRYPTOCORE_UNAVAILABLE";
    case CRYPTOCORE_IO_ERROR: return "CRYPTOCORE_IO_ERROR";
    case CRYPTOCORE_PANIC: return "CRYPTOCORE_PANIC";
    case CRYPTOCORE_INVALID_STATE: return "CRYPTOCORE_INVALID_STATE";
    default: return "unknown status";
  }
}

/* A failed library call: its status and the library's message (read at once: it is valid
   only until the next failing call). */
static int lib_fail(const char *call, cryptocore_status s) {
  const char *msg = cryptocore_last_error();
  return fail(false, "%s: %s (%u): %s", call, status_name(s), (unsigned)s, msg ? msg : "");
}

static int require_equal(const char *what, size_t i, const uint8_t *expected, size_t expected_len,
                         const cryptocore_buffer *got) {
  if (got->len != expected_len || (expected_len > 0 && memcmp(got->data, expected, expected_len) != 0)) {
    return fail(true, "%s: output %zu differs from the original (%zu bytes vs %zu bytes)", what, i, got->len,
                expected_len);
  }
  return 0;
}

/* --------------------------------------------------------------------------- method */

/* Timing parameters: peers-rust's `Method` (peers.py's). */
struct method {
  double min_time;
  size_t min_runs;
  size_t min_runs_large;
  double sample_target;
  double warmup;
  double max_wall;
  size_t large;           /* sizes from here need only min_runs_large samples */
  size_t max_batch_bytes; /* inputs of one batch held in memory at most */
  size_t max_runs;
};

static struct method method_new(bool quick) {
  struct method m = {
      .min_time = quick ? 0.15 : 1.0,
      .min_runs = quick ? 3 : 5,
      .min_runs_large = 3,
      .sample_target = quick ? 0.002 : 0.005,
      .warmup = quick ? 0.02 : 0.2,
      .max_wall = quick ? 10.0 : 120.0,
      .large = 64 * MIB,
      .max_batch_bytes = 64 * MIB,
      .max_runs = 100000,
  };
  return m;
}

static void human_size(size_t n, char *out, size_t cap) {
  if (n == 0)
    snprintf(out, cap, "0 B");
  else if (n >= MIB && n % MIB == 0)
    snprintf(out, cap, "%zu MiB", n / MIB);
  else if (n >= KIB && n % KIB == 0)
    snprintf(out, cap, "%zu KiB", n / KIB);
  else
    snprintf(out, cap, "%zu B", n);
}

static int now(double *t) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return fail(false, "clock_gettime: %s", strerror(errno));
  *t = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
  return 0;
}

static int fill_random(uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t got = getrandom(p, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return fail(false, "getrandom: %s", strerror(errno));
    }
    p += got;
    n -= (size_t)got;
  }
  return 0;
}

/* A growable array of doubles. */
struct vec {
  double *v;
  size_t n, cap;
};

static int vec_push(struct vec *v, double x) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? 2 * v->cap : 64;
    double *p = realloc(v->v, cap * sizeof *p);
    if (!p) return fail(false, "out of memory (%zu timings)", cap);
    v->v = p;
    v->cap = cap;
  }
  v->v[v->n++] = x;
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(struct vec *v) {
  if (v->n == 0) return NAN;
  qsort(v->v, v->n, sizeof *v->v, cmp_double);
  return v->n % 2 ? v->v[v->n / 2] : (v->v[v->n / 2 - 1] + v->v[v->n / 2]) / 2.0;
}

/* --------------------------------------------------------------------------- the row */

/* A keyring with the bench key and a local envelope over it. */
struct bench {
  cryptocore_keyring *keyring;
  cryptocore_envelope *envelope;
};

static int bench_new(struct bench *b) {
  cryptocore_status s = cryptocore_keyring_new(&b->keyring);
  if (s != CRYPTOCORE_OK) return lib_fail("cryptocore_keyring_new", s);
  s = cryptocore_keyring_create_key(b->keyring, KEY_NAME, NULL);
  if (s != CRYPTOCORE_OK) return lib_fail("cryptocore_keyring_create_key", s);
  s = cryptocore_envelope_from_keyring(b->keyring, &b->envelope);
  if (s != CRYPTOCORE_OK) return lib_fail("cryptocore_envelope_from_keyring", s);
  return 0;
}

static void bench_free(struct bench *b) {
  cryptocore_envelope_free(b->envelope);
  cryptocore_keyring_free(b->keyring);
  b->envelope = NULL;
  b->keyring = NULL;
}

enum op { SEAL, OPEN };

static const char *op_name(enum op op) { return op == SEAL ? "seal" : "open"; }

static cryptocore_status seal(const struct bench *b, const uint8_t *pt, size_t len, cryptocore_buffer *out) {
  return cryptocore_encrypt(b->envelope, KEY_NAME, CONTEXT, CONTEXT_LEN, pt, len, out);
}

static cryptocore_status open_(const struct bench *b, const uint8_t *ct, size_t len, cryptocore_buffer *out) {
  return cryptocore_decrypt(b->envelope, CONTEXT, CONTEXT_LEN, ct, len, out);
}

/* Outside the timer: every output against its plaintext (a seal output is decrypted
   first). */
static int check(const struct bench *b, enum op op, uint8_t *const *pts, size_t size, size_t k,
                 const cryptocore_buffer *outs) {
  for (size_t i = 0; i < k; i++) {
    const uint8_t *p = pts[i];
    if (op == OPEN) {
      if (require_equal(IMPL ": open", i, p, size, &outs[i]) != 0) return -1;
      continue;
    }
    cryptocore_buffer opened = {0};
    cryptocore_status s = open_(b, outs[i].data, outs[i].len, &opened);
    if (s != CRYPTOCORE_OK) {
      char why[sizeof err_msg];
      lib_fail("cryptocore_decrypt", s);
      snprintf(why, sizeof why, "%s", err_msg);
      return fail(true, IMPL ": seal output %zu did not open: %s", i, why);
    }
    int rc = require_equal(IMPL ": seal output did not open", i, p, size, &opened);
    cryptocore_buffer_free(&opened);
    if (rc != 0) return -1;
  }
  return 0;
}

/* One sample of `k` operations: `*secs` is the time of the timed region. Inputs (and, for
   open, their ciphertexts) are made before the timer starts; outputs are checked and
   freed after it stops. The allocations follow peers-rust's (one zeroed block per input,
   as `vec![0u8; size]`; the same order of frees), so that the allocator hands the library
   the same kind of memory for its outputs (reused, or fresh pages faulted in inside the
   timer) as in the Rust rows. */
static int sample(const struct bench *b, enum op op, size_t size, size_t k, double *secs) {
  int rc = -1;
  uint8_t **pts = calloc(k, sizeof *pts);
  cryptocore_buffer *cts = op == OPEN ? calloc(k, sizeof *cts) : NULL;
  cryptocore_buffer *outs = calloc(k, sizeof *outs);
  if (!pts || !outs || (op == OPEN && !cts)) {
    fail(false, "out of memory (a batch of %zu messages)", k);
    goto out;
  }
  for (size_t i = 0; i < k; i++) {
    pts[i] = calloc(size ? size : 1, 1);
    if (!pts[i]) {
      fail(false, "out of memory (a batch of %zu x %zu bytes)", k, size);
      goto out;
    }
    if (fill_random(pts[i], size) != 0) goto out;
  }
  if (op == OPEN) {
    for (size_t i = 0; i < k; i++) {
      cryptocore_status s = seal(b, pts[i], size, &cts[i]);
      if (s != CRYPTOCORE_OK) {
        lib_fail("cryptocore_encrypt", s);
        goto out;
      }
    }
  }

  cryptocore_status s = CRYPTOCORE_OK;
  size_t done = 0;
  double t0, t1;
  if (now(&t0) != 0) goto out;
  if (op == SEAL) {
    for (; done < k; done++) {
      s = seal(b, pts[done], size, &outs[done]);
      if (s != CRYPTOCORE_OK) break;
    }
  } else {
    for (; done < k; done++) {
      s = open_(b, cts[done].data, cts[done].len, &outs[done]);
      if (s != CRYPTOCORE_OK) break;
    }
  }
  if (now(&t1) != 0) goto out;

  if (s != CRYPTOCORE_OK) {
    lib_fail(op == SEAL ? "cryptocore_encrypt" : "cryptocore_decrypt", s);
    goto out;
  }
  if (check(b, op, pts, size, k, outs) != 0) goto out;
  *secs = t1 - t0;
  rc = 0;

out:
  for (size_t i = 0; cts && i < k; i++) cryptocore_buffer_free(&cts[i]);
  for (size_t i = 0; outs && i < k; i++) cryptocore_buffer_free(&outs[i]);
  for (size_t i = 0; pts && i < k; i++) free(pts[i]);
  free(outs);
  free(cts);
  free(pts);
  return rc;
}

/* The result of one cell. */
struct measured {
  double seconds; /* median per operation */
  size_t runs, batch, ops;
  double timed_s;
  bool capped;
};

/* peers-rust's `measure`: correctness first, warm-up (which estimates the time per
   operation and so the batch), then samples until enough is timed; the median per op. */
static int measure(const struct bench *b, enum op op, size_t size, const struct method *m, struct measured *r) {
  int rc = -1;
  struct vec est = {0}, samples = {0};
  double t, start, end;
  if (sample(b, op, size, 1, &t) != 0) goto out;
  if (now(&start) != 0) goto out;
  for (;;) {
    if (sample(b, op, size, 1, &t) != 0 || vec_push(&est, t) != 0 || now(&end) != 0) goto out;
    if (end - start >= m->warmup) break;
  }
  double per_op = median(&est);
  size_t batch = 1;
  if (per_op < m->sample_target) {
    double want = ceil(m->sample_target / (per_op > 1e-9 ? per_op : 1e-9));
    size_t cap = m->max_batch_bytes / (size ? size : 1);
    batch = want >= (double)cap ? cap : (size_t)want;
    if (batch < 1) batch = 1;
  }
  size_t min_runs = size >= m->large ? m->min_runs_large : m->min_runs;
  double timed = 0.0;
  bool capped = false;
  if (now(&start) != 0) goto out;
  for (;;) {
    if (sample(b, op, size, batch, &t) != 0 || vec_push(&samples, t / (double)batch) != 0) goto out;
    timed += t;
    if (samples.n >= min_runs && timed >= m->min_time) break;
    if (now(&end) != 0) goto out;
    if (samples.n >= m->max_runs || end - start >= m->max_wall) {
      capped = samples.n < min_runs || timed < m->min_time;
      break;
    }
  }
  r->runs = samples.n;
  r->seconds = median(&samples);
  r->batch = batch;
  r->ops = samples.n * batch;
  r->timed_s = timed;
  r->capped = capped;
  rc = 0;

out:
  free(est.v);
  free(samples.v);
  return rc;
}

/* --------------------------------------------------------------------------- machine */

/* The value of `key` (e.g. "Threads:") in /proc/self/status, or of the first line
   starting with `key` in another such file, trimmed. */
static int proc_field(const char *path, const char *key, char *out, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) return fail(false, "%s: %s", path, strerror(errno));
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    if (strncmp(line, key, strlen(key)) != 0) continue;
    char *v = line + strlen(key);
    v += strspn(v, " \t:");
    v[strcspn(v, "\n")] = '\0';
    snprintf(out, cap, "%s", v);
    found = true;
  }
  fclose(f);
  return found ? 0 : fail(false, "%s: no %s line", path, key);
}

static int threads(size_t *n) {
  char v[64];
  if (proc_field("/proc/self/status", "Threads:", v, sizeof v) != 0) return -1;
  char *end;
  unsigned long x = strtoul(v, &end, 10);
  if (end == v) return fail(false, "/proc/self/status: cannot parse Threads: %s", v);
  *n = x;
  return 0;
}

/* The CPUs this process may run on. */
static int affinity(int *cpus, size_t cap, size_t *n) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return fail(false, "sched_getaffinity: %s", strerror(errno));
  *n = 0;
  for (int c = 0; c < CPU_SETSIZE && *n < cap; c++)
    if (CPU_ISSET(c, &set)) cpus[(*n)++] = c;
  return 0;
}

/* The file libcryptocore was loaded from (the one measured). */
static const char *library_path(void) {
  Dl_info info;
  if (dladdr((void *)cryptocore_version, &info) != 0 && info.dli_fname) return info.dli_fname;
  return "?";
}

/* --------------------------------------------------------------------------- output */

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
      case '"': fputs("\\\"", f); break;
      case '\\': fputs("\\\\", f); break;
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      default:
        if (*p < 0x20)
          fprintf(f, "\\u%04x", *p);
        else
          fputc(*p, f);
    }
  }
  fputc('"', f);
}

/* The shortest decimal form that reads back as `x` (null for NaN and infinities, as
   serde_json writes them). */
static void json_num(FILE *f, double x) {
  if (!isfinite(x)) {
    fputs("null", f);
    return;
  }
  char buf[64];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, x);
    if (strtod(buf, NULL) == x) break;
  }
  fputs(buf, f);
}

/* `x` rounded to 1/`scale`, as peers-rust rounds (`(x * 1e6).round() / 1e6`). */
static double round_to(double x, double scale) { return round(x * scale) / scale; }

/* The JSON-lines file, and the failures so far. */
struct emitter {
  FILE *out;
  bool quick;
  int cpus[CPU_SETSIZE];
  size_t n_cpus;
  char **failures;
  size_t n_failures;
};

static void add_failure(struct emitter *em, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_failure(struct emitter *em, const char *fmt, ...) {
  char *msg = NULL;
  va_list ap;
  va_start(ap, fmt);
  int n = vasprintf(&msg, fmt, ap);
  va_end(ap);
  char **list = n < 0 ? NULL : realloc(em->failures, (em->n_failures + 1) * sizeof *list);
  if (!list) {
    fprintf(stderr, PROG ": out of memory recording a failure\n");
    exit(1);
  }
  em->failures = list;
  em->failures[em->n_failures++] = msg;
}

static void json_affinity(struct emitter *em) {
  fputc('[', em->out);
  for (size_t i = 0; i < em->n_cpus; i++) fprintf(em->out, i ? ",%d" : "%d", em->cpus[i]);
  fputc(']', em->out);
}

/* Ends a line and flushes it (a crash keeps every finished cell). */
static int end_line(struct emitter *em) {
  fputs("}\n", em->out);
  if (fflush(em->out) != 0 || ferror(em->out)) return fail(false, "writing the output: %s", strerror(errno));
  return 0;
}

static int line_error(struct emitter *em, enum op op, size_t size, const char *note) {
  fputs("{\"kind\":\"error\",\"impl\":\"" IMPL "\",\"op\":", em->out);
  json_str(em->out, op_name(op));
  fprintf(em->out, ",\"size\":%zu,\"note\":", size);
  json_str(em->out, note);
  return end_line(em);
}

/* Every cell of the row: seal and open at each size. */
static int row(struct emitter *em, const struct bench *b, const char *version, const char *note, const size_t *sizes,
               size_t n_sizes, const struct method *m) {
  fputs("{\"kind\":\"version\",\"impl\":\"" IMPL "\",\"version\":", em->out);
  json_str(em->out, version);
  fputs(",\"note\":", em->out);
  json_str(em->out, note);
  if (end_line(em) != 0) return -1;

  for (size_t si = 0; si < n_sizes; si++) {
    for (int o = 0; o < 2; o++) {
      enum op op = o == 0 ? SEAL : OPEN;
      size_t size = sizes[si];
      char hs[32];
      human_size(size, hs, sizeof hs);
      struct measured r;
      if (measure(b, op, size, m, &r) != 0) {
        const char *what = err_is_check ? "CHECK FAILED" : "ERROR";
        char msg[sizeof err_msg + 32];
        snprintf(msg, sizeof msg, "%s: %s", what, err_msg);
        fprintf(stderr, PROG ": %s " IMPL " %s %s: %s\n", what, op_name(op), hs, err_msg);
        add_failure(em, IMPL " %s %s: %s", op_name(op), hs, msg);
        if (line_error(em, op, size, msg) != 0) return -1;
        continue;
      }
      double gbps = (double)size / r.seconds / 1e9;
      fputs("{\"kind\":\"result\",\"impl\":\"" IMPL "\",\"op\":", em->out);
      json_str(em->out, op_name(op));
      fprintf(em->out, ",\"size\":%zu,\"gbps\":", size);
      json_num(em->out, round_to(gbps, 1e6));
      fprintf(em->out, ",\"runs\":%zu,\"note\":", r.runs);
      if (r.capped) {
        char capped[8192];
        snprintf(capped, sizeof capped, "%s; stopped at the %g s wall-clock cap", note, m->max_wall);
        json_str(em->out, capped);
      } else {
        json_str(em->out, note);
      }
      fputs(",\"seconds\":", em->out);
      json_num(em->out, r.seconds);
      fprintf(em->out, ",\"batch\":%zu,\"ops\":%zu,\"timed_s\":", r.batch, r.ops);
      json_num(em->out, round_to(r.timed_s, 1e4));
      fputs(",\"version\":", em->out);
      json_str(em->out, version);
      fprintf(em->out, ",\"quick\":%s,\"affinity\":", em->quick ? "true" : "false");
      json_affinity(em);
      if (end_line(em) != 0) return -1;
      char per[32];
      if (r.seconds < 1e-3)
        snprintf(per, sizeof per, "%.2f µs", r.seconds * 1e6);
      else
        snprintf(per, sizeof per, "%.2f ms", r.seconds * 1e3);
      fprintf(stderr, "  %-20s %-4s %7s: %9.4f GB/s  (%s/op, median of %zu samples x %zu)\n", IMPL, op_name(op), hs,
              gbps, per, r.runs, r.batch);
    }
  }

  /* Single-threaded means what it says: the library may not have started a thread
     behind the measurement's back. */
  size_t n = 0;
  if (threads(&n) != 0) return -1;
  if (n != 1) {
    char msg[128];
    snprintf(msg, sizeof msg, "%zu threads in this process after the " IMPL " cells, not 1", n);
    fprintf(stderr, PROG ": ERROR %s\n", msg);
    add_failure(em, "%s", msg);
    if (line_error(em, SEAL, 0, msg) != 0) return -1;
  }
  return 0;
}

/* --------------------------------------------------------------------------- main */

static void usage(FILE *f) {
  fprintf(f,
          "usage: " PROG " [--quick] [--sizes N,N,...] [--out FILE] [--run-id ID]\n"
          "  Seal/open throughput of the C ABI (impl " IMPL "), one thread, as JSON lines.\n"
          "  --quick        smoke run: 1 KiB and 1 MiB, short durations (also PEERS_QUICK=1)\n"
          "  --sizes LIST   comma-separated sizes in bytes (default 1024,1048576,67108864)\n"
          "  --out FILE     JSON-lines output (also PEERS_OUT; default results-c.jsonl next to\n"
          "                 this executable)\n"
          "  --run-id ID    run id for the meta line (also PEERS_RUN_ID)\n");
}

/* "a,b,c" in bytes into a new array. */
static int parse_sizes(const char *s, size_t **out, size_t *n) {
  size_t cap = 1;
  for (const char *p = s; *p; p++) cap += *p == ',';
  size_t *v = calloc(cap, sizeof *v);
  if (!v) return -1;
  *n = 0;
  const char *p = s;
  for (;;) {
    char *end;
    errno = 0;
    if (*p < '0' || *p > '9') break;
    unsigned long long x = strtoull(p, &end, 10);
    if (errno != 0 || x > SIZE_MAX || (*end != ',' && *end != '\0')) break;
    v[(*n)++] = (size_t)x;
    if (*end == '\0') {
      *out = v;
      return 0;
    }
    p = end + 1;
  }
  free(v);
  return -1;
}

/* results-c.jsonl in the directory of this executable. */
static char *default_out(void) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return NULL;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return NULL;
  *slash = '\0';
  return fmt_alloc("%s/results-c.jsonl", exe);
}

int main(int argc, char **argv) {
  const char *env_quick = getenv("PEERS_QUICK");
  bool quick = env_quick && strcmp(env_quick, "1") == 0;
  const char *out_arg = getenv("PEERS_OUT");
  if (out_arg && !*out_arg) out_arg = NULL;
  const char *run_id = getenv("PEERS_RUN_ID");
  if (!run_id) run_id = "";
  const char *sizes_arg = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char **dest = NULL;
    if (strcmp(a, "--quick") == 0) {
      quick = true;
      continue;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    }
    const char *flags[] = {"--out", "--sizes", "--run-id"};
    const char **dests[] = {&out_arg, &sizes_arg, &run_id};
    const char *value = NULL;
    for (size_t f = 0; f < 3 && !dest; f++) {
      size_t len = strlen(flags[f]);
      if (strcmp(a, flags[f]) == 0) {
        if (i + 1 >= argc) {
          fprintf(stderr, PROG ": %s needs a value\n", a);
          return 2;
        }
        dest = dests[f];
        value = argv[++i];
      } else if (strncmp(a, flags[f], len) == 0 && a[len] == '=') {
        dest = dests[f];
        value = a + len + 1;
      }
    }
    if (!dest) {
      fprintf(stderr, PROG ": unknown argument: %s\n", a);
      usage(stderr);
      return 2;
    }
    *dest = value;
  }

  size_t *sizes_owned = NULL;
  const size_t *sizes = quick ? SIZES_QUICK : SIZES_FULL;
  size_t n_sizes = quick ? sizeof SIZES_QUICK / sizeof *SIZES_QUICK : sizeof SIZES_FULL / sizeof *SIZES_FULL;
  if (sizes_arg) {
    if (parse_sizes(sizes_arg, &sizes_owned, &n_sizes) != 0) {
      fprintf(stderr, PROG ": --sizes: expected comma-separated byte counts, got %s\n", sizes_arg);
      return 2;
    }
    sizes = sizes_owned;
  }

  int status = 1;
  struct method m = method_new(quick);
  struct emitter em = {.quick = quick};
  struct bench bench = {0};
  char *out_owned = NULL, *partial = NULL, *method_text = NULL, *version = NULL;
  if (!out_arg) {
    out_owned = default_out();
    if (!out_owned) {
      fprintf(stderr, PROG ": error: no output path (pass --out FILE or set PEERS_OUT)\n");
      goto done;
    }
    out_arg = out_owned;
  }
  if (affinity(em.cpus, CPU_SETSIZE, &em.n_cpus) != 0) {
    fprintf(stderr, PROG ": error: %s\n", err_msg);
    goto done;
  }
  if (em.n_cpus != 1)
    fprintf(stderr,
            PROG ": WARNING: this process may run on %zu CPUs, not one core; use benches/peers/run.sh "
            "(taskset -c 0) for the published figures\n",
            em.n_cpus);
  if (quick) fprintf(stderr, PROG ": --quick: smoke-run durations and sizes, not figures to publish\n");
#ifndef __OPTIMIZE__
  fprintf(stderr, PROG ": WARNING: built without optimization; build with -O2 (benches/peers/run.sh does)\n");
#endif

  partial = fmt_alloc("%s.partial", out_arg);
  if (!partial) {
    fprintf(stderr, PROG ": error: out of memory\n");
    goto done;
  }
  em.out = fopen(partial, "w");
  if (!em.out) {
    fprintf(stderr, PROG ": error: %s: %s\n", partial, strerror(errno));
    goto done;
  }

  char date[32] = "?", cpu[256] = "?", large[32];
  time_t secs = time(NULL);
  struct tm tm;
  if (gmtime_r(&secs, &tm)) strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (proc_field("/proc/cpuinfo", "model name", cpu, sizeof cpu) != 0) snprintf(cpu, sizeof cpu, "?");
  human_size(m.large, large, sizeof large);
  const char *lib_version = cryptocore_version();
  if (!lib_version) lib_version = "?";
  method_text = fmt_alloc(
      "warm-up %g s; samples of >= %g ms (batched below that); repeat until >= %g s timed and >= %zu "
               "samples (>= %zu from %s); median per operation; fresh inputs from getrandom(2) per sample; every "
               "output checked outside the timer; outputs freed with cryptocore_buffer_free outside the timer; "
               "clock_gettime(CLOCK_MONOTONIC); one thread",
               m.warmup, m.sample_target * 1e3, m.min_time, m.min_runs, m.min_runs_large, large);
  version = fmt_alloc(
               "libcryptocore %s (C ABI from a C program built with " COMPILER
#ifdef PEERS_AWS_LC_RS_VERSION
               "; aws-lc-rs " PEERS_AWS_LC_RS_VERSION
#endif
#ifndef __OPTIMIZE__
               "; NOT optimized"
#endif
               ")",
               lib_version);
  if (!method_text || !version) {
    fprintf(stderr, PROG ": error: out of memory\n");
    goto done;
  }

  fputs("{\"kind\":\"meta\",\"source\":\"" SOURCE "\",\"run_id\":", em.out);
  json_str(em.out, run_id);
  fputs(",\"date\":", em.out);
  json_str(em.out, date);
  fprintf(em.out, ",\"quick\":%s,\"affinity\":", quick ? "true" : "false");
  json_affinity(&em);
  fputs(",\"cpu\":", em.out);
  json_str(em.out, cpu);
  fputs(",\"method\":", em.out);
  json_str(em.out, method_text);
  fputs(",\"compiler\":", em.out);
  json_str(em.out, COMPILER);
  fputs(",\"library\":", em.out);
  json_str(em.out, library_path());
  if (end_line(&em) != 0) {
    fprintf(stderr, PROG ": error: %s: %s\n", partial, err_msg);
    goto done;
  }

  if (bench_new(&bench) != 0) {
    fprintf(stderr, PROG ": SKIPPED " IMPL ": %s\n", err_msg);
    add_failure(&em, IMPL ": could not be set up (%s)", err_msg);
    fputs("{\"kind\":\"skip\",\"impl\":\"" IMPL "\",\"note\":", em.out);
    json_str(em.out, err_msg);
    if (end_line(&em) != 0) {
      fprintf(stderr, PROG ": error: %s: %s\n", partial, err_msg);
      goto done;
    }
  } else if (row(&em, &bench, version, NOTE, sizes, n_sizes, &m) != 0) {
    fprintf(stderr, PROG ": error: %s\n", err_msg);
    goto done;
  }

  FILE *f = em.out;
  em.out = NULL;
  if (fclose(f) != 0) {
    fprintf(stderr, PROG ": error: %s: %s\n", partial, strerror(errno));
    goto done;
  }
  if (rename(partial, out_arg) != 0) {
    fprintf(stderr, PROG ": error: %s: %s\n", out_arg, strerror(errno));
    goto done;
  }
  fprintf(stderr, PROG ": wrote %s\n", out_arg);
  if (em.n_failures == 0) {
    status = 0;
  } else {
    fprintf(stderr, PROG ": FAILED:\n");
    for (size_t i = 0; i < em.n_failures; i++) fprintf(stderr, "  %s\n", em.failures[i]);
  }

done:
  if (em.out) fclose(em.out);
  bench_free(&bench);
  for (size_t i = 0; i < em.n_failures; i++) free(em.failures[i]);
  free(em.failures);
  free(sizes_owned);
  free(out_owned);
  free(partial);
  free(method_text);
  free(version);
  return status;
}
