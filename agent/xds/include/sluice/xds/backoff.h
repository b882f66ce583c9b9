// Exponential backoff with jitter for reconnecting to the control plane.
//
// Delay n (n = 0, 1, ...) is initial * multiplier^n, capped at max, then spread by
// ±jitter (uniform) so a fleet of agents does not reconnect in lockstep after istiod
// restarts; the result never exceeds max.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>

namespace sluice::xds {

struct BackoffPolicy {
  std::chrono::milliseconds initial{500};
  std::chrono::milliseconds max{30'000};
  double multiplier = 2.0;
  double jitter = 0.2;  // fraction of the delay, 0..1
};

class Backoff {
 public:
  explicit Backoff(BackoffPolicy p, uint64_t seed = std::random_device{}()) : p_(p), rng_(seed) {}

  std::chrono::milliseconds Next() {
    double base = static_cast<double>(p_.initial.count()) * std::pow(p_.multiplier, attempt_);
    base = std::min(base, static_cast<double>(p_.max.count()));
    if (base < static_cast<double>(p_.max.count()))
      ++attempt_;  // stop growing at the cap
    std::uniform_real_distribution<double> spread(1.0 - p_.jitter, 1.0 + p_.jitter);
    double d = std::min(base * spread(rng_), static_cast<double>(p_.max.count()));
    return std::chrono::milliseconds(static_cast<int64_t>(d));
  }
  void Reset() { attempt_ = 0; }

 private:
  BackoffPolicy p_;
  std::mt19937_64 rng_;
  int attempt_ = 0;
};

}  // namespace sluice::xds
