// A minimal test harness: CHECK aborts the test binary with the failing expression and line,
// so ctest reports the failure and its output.
#pragma once

#include <cstdio>
#include <cstdlib>

#define CHECK(cond)                                                               \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                               \
    }                                                                             \
  } while (0)

#define RUN(test)                          \
  do {                                     \
    std::printf("[ RUN  ] %s\n", #test);   \
    test();                                \
    std::printf("[  OK  ] %s\n", #test);   \
  } while (0)
