// The header from C++ (-std=c++17 -Wall -Wextra -Werror -pedantic): it must compile, link
// and work without any C++-specific wrapper. RAII around the handles, as a C++ service
// would write it.
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "cryptocore.h"

namespace {
struct EnvelopeFree {
  void operator()(cryptocore_envelope *e) const { cryptocore_envelope_free(e); }
};
struct KeyringFree {
  void operator()(cryptocore_keyring *k) const { cryptocore_keyring_free(k); }
};
struct Buffer {
  cryptocore_buffer b{};
  ~Buffer() { cryptocore_buffer_free(&b); }
};
}  // namespace

int main() {
  cryptocore_keyring *raw_ring = nullptr;
  if (cryptocore_keyring_new(&raw_ring) != CRYPTOCORE_OK) return 1;
  std::unique_ptr<cryptocore_keyring, KeyringFree> ring(raw_ring);
  if (cryptocore_keyring_create_key(ring.get(), "cpp/key", nullptr) != CRYPTOCORE_OK) return 1;
  cryptocore_envelope *raw_env = nullptr;
  if (cryptocore_envelope_from_keyring(ring.get(), &raw_env) != CRYPTOCORE_OK) return 1;
  std::unique_ptr<cryptocore_envelope, EnvelopeFree> env(raw_env);

  const cryptocore_kv ctx[] = {{"lang", "c++"}};
  const std::string msg = "from C++";
  Buffer ct, pt;
  if (cryptocore_encrypt(env.get(), "cpp/key", ctx, 1, reinterpret_cast<const uint8_t *>(msg.data()), msg.size(),
                         &ct.b) != CRYPTOCORE_OK)
    return 1;
  if (cryptocore_decrypt(env.get(), ctx, 1, ct.b.data, ct.b.len, &pt.b) != CRYPTOCORE_OK) return 1;
  if (std::string(reinterpret_cast<const char *>(pt.b.data), pt.b.len) != msg) return 1;
  std::printf("c++ smoke (cryptocore %s): ok\n", cryptocore_version());
  return 0;
}
