// Internal helper shared by the CPU sources: record a failure for ffv_last_error().
#pragma once
#include <string>

#include "fastfvae.h"

namespace ffv {
ffv_status fail(ffv_status status, const std::string& message);
}
