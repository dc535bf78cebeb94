// The shim's error convention, shared by its translation units: every extern "C" function
// runs its body through guarded(), which turns a C++ exception into a malloc'd,
// NUL-terminated message (freed by the caller with ausa_shim_free_error) and success into
// nullptr, so no exception crosses the C boundary.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace ausa_shim {

inline char* error_copy(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, what, n + 1);
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    // what_without_backtrace: the message a user can act on, not the C++ stack.
    return error_copy(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return error_copy(e.what());
  } catch (...) {
    return error_copy("unknown C++ exception in the ausa shim");
  }
}

}  // namespace ausa_shim
