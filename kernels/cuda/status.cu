// Status codes and the thread-local last-error message of the CUDA library.
#include <string>

#include "fastfvae.h"

namespace {
thread_local std::string last_error;
}

extern "C" {
FFV_API const char* ffv_last_error(void) { return last_error.c_str(); }
FFV_API int32_t ffv_abi_version(void) { return 1; }
}
