// Disk the daemon reclaims itself: uploads a crash interrupted, and the temp
// files a successful job's writers left behind.
#pragma once

#include <filesystem>
#include <vector>

namespace lorad::server {

// The hidden names a dataset folder takes while DeleteDataset removes it.
inline constexpr char kDeletingPrefix[] = ".deleting-";

// Removes the `.incoming-*` folders under `datasets_root` (uploads cut short by
// a crash or kill; a running daemon removes its own when a call ends). Call
// only while holding the data dir's lock: a live upload's folder looks the
// same. Returns the folders removed.
std::vector<std::filesystem::path> RemoveIncompleteUploads(const std::filesystem::path& datasets_root);

// Removes the `.deleting-*` folders under `datasets_root`: deleted datasets
// whose files a crash, kill or stop left behind (already out of every
// listing). Same lock rule as RemoveIncompleteUploads. Returns the folders removed.
std::vector<std::filesystem::path> RemoveInterruptedDeletions(const std::filesystem::path& datasets_root);

// Removes `<name>.tmp.<pid>` files (atomic-write leftovers) anywhere under
// `output_dir`, without following symlinked folders (the shared latent
// cache). Returns the files removed.
std::vector<std::filesystem::path> RemoveTempFiles(const std::filesystem::path& output_dir);

}  // namespace lorad::server
