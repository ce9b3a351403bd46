// Record a failure for ffv_last_error(): defined once per library (kernels/cpu/status.cpp,
// kernels/cuda/status.cu), used by both through arg_checks.h and their own helpers.
#pragma once
#include <string>

#include "fastfvae.h"

namespace ffv {
ffv_status fail(ffv_status status, const std::string& message);
}
