// lorad-train as its own launcher (accelerate's `launch` for num_processes > 1
// without the torchrun environment): starts this machine's ranks as child
// lorad-train processes with the torchrun variables set (WORLD_SIZE, RANK,
// LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), the same arguments,
// and the events flags (--events-fd / --events-file) for global rank 0 only.
// SIGTERM / SIGINT are passed on to every rank (each saves, rank 0 writes the
// state). Returns rank 0's exit code on the machine that runs it, else the
// first failing rank's; a rank still running ddp_timeout + 30 s after another
// failed is killed (the ranks end themselves long before that).
#pragma once

#include <string>
#include <vector>

#include "core/train/distributed.h"

namespace lorad::train {

// `args`: lorad-train's arguments (without argv[0]).
int LaunchLocalRanks(const DistributedSpec& spec, const std::vector<std::string>& args);

// `args` without --events-fd / --events-file and their values.
std::vector<std::string> WithoutEventsFlags(const std::vector<std::string>& args);

}  // namespace lorad::train
