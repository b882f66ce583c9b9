// Result<T> (agent/common/include/sluice/common/result.h): a value or an error that
// names what failed.
#include <catch2/catch.hpp>

#include "sluice/common/result.h"

namespace {
sluice::Result<int> Parse(int v) {
  if (v < 0)
    return sluice::FailErrno("parsing value", EINVAL);
  return v * 2;
}
}  // namespace

TEST_CASE("Result carries a value or an error naming what failed") {
  auto ok = Parse(21);
  REQUIRE(ok.has_value());
  CHECK(*ok == 42);

  auto bad = Parse(-1);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code == EINVAL);
  CHECK(bad.error().message == "parsing value: Invalid argument");
  auto wrapped = sluice::Wrap("loading config", bad.error());
  CHECK(wrapped.error().message == "loading config: parsing value: Invalid argument");
}
