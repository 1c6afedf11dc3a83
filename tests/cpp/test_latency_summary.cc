// LatencySummaries: counts and sums of every observation, quantiles over the window's.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "latency_summary.h"

using namespace pyserve;

namespace {

constexpr uint64_t kSecond = 1'000'000'000ull;

TEST(LatencySummaries, QuantilesAreNearestRanksOverTheWindow) {
  LatencySummaries summaries(60 * kSecond, 1000);
  for (uint64_t us = 1; us <= 100; ++us) summaries.Observe(LatencyPhase::kQueue, us, kSecond);
  const auto s = summaries.Read(LatencyPhase::kQueue, {0.5, 0.9, 0.99, 1.0}, 2 * kSecond);
  EXPECT_EQ(s.count, 100u);
  EXPECT_EQ(s.sum_us, 5050u);
  EXPECT_EQ(s.values, (std::vector<double>{50, 90, 99, 100}));
  EXPECT_EQ(summaries.Read(LatencyPhase::kRequest, {0.5}, 2 * kSecond).count, 0u);
}

TEST(LatencySummaries, OldObservationsLeaveTheQuantilesNotTheCount) {
  LatencySummaries summaries(60 * kSecond, 1000);
  summaries.Observe(LatencyPhase::kRequest, 1000, kSecond);
  summaries.Observe(LatencyPhase::kRequest, 7, 100 * kSecond);
  auto s = summaries.Read(LatencyPhase::kRequest, {0.99}, 101 * kSecond);
  EXPECT_EQ(s.count, 2u);
  EXPECT_EQ(s.sum_us, 1007u);
  EXPECT_EQ(s.values, std::vector<double>{7});
  s = summaries.Read(LatencyPhase::kRequest, {0.5}, 1000 * kSecond);
  EXPECT_TRUE(std::isnan(s.values.at(0)));  // nothing in the window
}

TEST(LatencySummaries, TheRingKeepsTheNewest) {
  LatencySummaries summaries(60 * kSecond, 4);
  for (uint64_t us = 1; us <= 10; ++us) summaries.Observe(LatencyPhase::kQueue, us, kSecond);
  const auto s = summaries.Read(LatencyPhase::kQueue, {0.0, 1.0}, kSecond);
  EXPECT_EQ(s.count, 10u);
  EXPECT_EQ(s.values, (std::vector<double>{7, 10}));
}

}  // namespace
