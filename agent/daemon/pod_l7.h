// PodL7: where the agent's enrolled pods get their L7 proxy. NodeAgent opens a pod's
// before it enrols the pod (so a redirected connection always finds a listener) and
// closes it after it unenrols the pod. The node agent's is L7Supervisor.
#pragma once

#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/enrolment/enrolment.h"

namespace sluice::agent {

class PodL7 {
 public:
  virtual ~PodL7() = default;
  // `ips`: the pod's addresses, as CNI gave them ("10.1.0.5/24").
  virtual Result<void> Open(const enrolment::PodKey& key, const std::string& netns,
                            const enrolment::Labels& labels,
                            const std::vector<std::string>& ips) = 0;
  virtual void Close(const enrolment::PodKey& key) = 0;
};

}  // namespace sluice::agent
