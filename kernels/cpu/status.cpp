// Status codes and the thread-local last-error message of the CPU library.
#include "fastfvae.h"
#include "status.h"

#include <string>

namespace {
thread_local std::string last_error;
}

namespace ffv {
ffv_status fail(ffv_status status, const std::string& message) {
  last_error = message;
  return status;
}
}  // namespace ffv

extern "C" {
FFV_API const char* ffv_last_error(void) { return last_error.c_str(); }
FFV_API int32_t ffv_abi_version(void) { return FFV_ABI_VERSION; }
}
