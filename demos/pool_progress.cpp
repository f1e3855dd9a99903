// SPDX-License-Identifier: MIT
// A long map with a progress bar: wrap pool.imap(...) in shmkit::with_progress and the bar,
// the rate and the time left are drawn on stderr (a plain line every few seconds when stderr is
// not a terminal).
#include <shmkit/shmkit.hpp>

#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

// A little CPU work per item: the Leibniz series for pi, to x terms.
double leibniz(int terms) {
  double s = 0;
  for (int k = 0; k < terms; ++k) s += (k % 2 ? -4.0 : 4.0) / (2 * k + 1);
  return s;
}

int main() {
  shmkit::pool pool;  // cpu_count() workers
  std::vector<int> work(400, 200000);
  double sum = 0;
  for (double pi : shmkit::with_progress(pool.imap(leibniz, work, 4), "leibniz")) sum += pi;
  std::printf("mean estimate of pi over %zu tasks: %.6f\n", work.size(), sum / work.size());
}
