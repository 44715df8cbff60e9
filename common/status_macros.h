// GNC_RETURN_IF_ERROR(expr): evaluates an absl::Status expression and returns it from
// the enclosing function (which returns Status or StatusOr) when it is not OK.
#ifndef GNC_COMMON_STATUS_MACROS_H_
#define GNC_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"

#define GNC_RETURN_IF_ERROR(expr)                     \
  do {                                                \
    if (absl::Status gnc_s_ = (expr); !gnc_s_.ok()) { \
      return gnc_s_;                                  \
    }                                                 \
  } while (false)

#endif  // GNC_COMMON_STATUS_MACROS_H_
