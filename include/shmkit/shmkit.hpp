// SPDX-License-Identifier: MIT
// The whole of shmkit: Python-style multiprocessing for C++, on shared memory.
#pragma once

#include "shmkit/codec.hpp"
#include "shmkit/error.hpp"
#include "shmkit/naming.hpp"
#include "shmkit/pipe.hpp"
#include "shmkit/shared_memory.hpp"
