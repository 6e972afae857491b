"""Two cores writing, then reading back, their halves of an activation-shaped buffer (issue 13): the ways a layer's
work can be split between threads at batch 1, timed without the kernels around them.

No Lua counterpart. A (channels, positions) float buffer, like one image's activations, is split between two threads
the way the lookup kernels split a layer: by positions (each thread the same half of every channel's row, as the
tile-major taps and the GEMM's column blocks do), by positions with a gap between the two halves of a row, or by
channels (each thread half of the rows, as the channel-major taps and the dictionary chunks do). Each thread writes
its half, waits for the other, then reads it back twice (one load per 64-byte line, every line of its half); the
table shows the median microseconds of the first and second read per thread, and of the same first read with the
other thread idle. The reads are those of the next layer's dictionary product, which reads what the layer before
wrote; on a machine where each core keeps the lines it wrote, the first read costs about what the second does.

The C++ probe is compiled with g++ (which the lookup kernels need too) into a temporary folder; nothing is written to
the checkout. Run: .venv/bin/python benchmarks/thread_split_speed.py [--repeats N]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

PROBE = r'''
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

// args: channels, positions per row, split (0 positions, 1 channels), gap in floats between a row's halves,
// active threads (1: thread 1 only waits), repeats. Prints, per thread: median us of its first and second read.
int main(int argc, char** argv) {
  const long C = atol(argv[1]), HW = atol(argv[2]), gap = atol(argv[4]), reps = atol(argv[6]);
  const int split = atoi(argv[3]), active = atoi(argv[5]);
  const long ld = HW + gap;  // floats per channel row; a gap sits between the two position halves
  std::vector<float> buf(C * ld + 64);
  float* b = buf.data();
  std::vector<double> first[2], second[2];
  volatile float sink[2] = {0, 0};  // keeps the reads
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto us = [](auto a, auto z) { return std::chrono::duration<double, std::micro>(z - a).count(); };
#pragma omp parallel num_threads(2)
  {
    const int t = omp_get_thread_num();
    long c0 = 0, c1 = C, p0 = 0, p1 = HW / 2;
    if (split == 1) {
      c0 = t * C / 2;
      c1 = (t + 1) * C / 2;
      p1 = ld;
    } else if (t == 1) {
      p0 = HW / 2 + gap;
      p1 = ld;
    }
    const bool work = t < active;
    for (long r = 0; r < reps + 20; ++r) {
      if (work)
        for (long c = c0; c < c1; ++c)
          for (long p = p0; p < p1; ++p) b[c * ld + p] = float(r + p);
#pragma omp barrier
      float acc = 0;
      const auto s1 = now();
      if (work)
        for (long c = c0; c < c1; ++c)
          for (long p = p0; p < p1; p += 16) acc += b[c * ld + p];
      const auto e1 = now();
      if (work)
        for (long c = c0; c < c1; ++c)
          for (long p = p0; p < p1; p += 16) acc += b[c * ld + p];
      const auto e2 = now();
      sink[t] = sink[t] + acc;
      if (r >= 20) {
        first[t].push_back(us(s1, e1));
        second[t].push_back(us(e1, e2));
      }
#pragma omp barrier
    }
  }
  for (int t = 0; t < active; ++t) {
    std::sort(first[t].begin(), first[t].end());
    std::sort(second[t].begin(), second[t].end());
    std::printf("%.2f %.2f\n", first[t][first[t].size() / 2], second[t][second[t].size() / 2]);
  }
  return 0;
}
'''

CHANNELS = 128
PLANES = [('14x14', 196), ('28x28', 784), ('56x56', 3136)]
# (label, split, gap in floats)
SPLITS = [('positions (same half of every row)', 0, 0),
          ('positions, halves 1 KB apart', 0, 256),
          ('channels (half of the rows each)', 1, 0)]


def build(folder):
    compiler = shutil.which('g++')
    if compiler is None:
        sys.exit('thread_split_speed: g++ not found; install a C++ compiler (the lookup kernels need one too)')
    source, binary = os.path.join(folder, 'probe.cpp'), os.path.join(folder, 'probe')
    with open(source, 'w') as f:
        f.write(PROBE)
    done = subprocess.run([compiler, '-O2', '-fopenmp', source, '-o', binary], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ['no message'])[-1]
        sys.exit(f'thread_split_speed: g++ could not build the probe with OpenMP ({last}); install g++ with libgomp')
    return binary


def measure(binary, plane, split, gap, active, repeats):
    out = subprocess.run([binary, str(CHANNELS), str(plane), str(split), str(gap), str(active), str(repeats)],
                         check=True, capture_output=True, text=True).stdout.split()
    return [float(v) for v in out]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=400, help='write/read rounds per measurement (median)')
    args = parser.parse_args()
    if args.repeats < 1:
        sys.exit('thread_split_speed: --repeats must be at least 1')
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    if cores < 2:
        sys.exit(f'thread_split_speed: needs 2 cores, this process may use {cores}')
    load = ', '.join(f'{v:.2f}' for v in os.getloadavg())
    with tempfile.TemporaryDirectory() as folder:
        binary = build(folder)
        print(f'{CHANNELS} channel rows per buffer, 2 threads of {cores} cores; machine load average {load}')
        print('median us to read back the half a thread has just written (one load per 64-byte line): first read, '
              'second read, per thread; then the first read with the other thread idle')
        header = f'{"plane":6s} {"split":36s} {"first t0":>9s} {"first t1":>9s} {"second t0":>10s} ' \
                 f'{"second t1":>10s} {"alone":>7s}'
        print(header)
        print('-' * len(header))
        for name, plane in PLANES:
            for label, split, gap in SPLITS:
                both = measure(binary, plane, split, gap, 2, args.repeats)
                alone = measure(binary, plane, split, gap, 1, args.repeats)
                print(f'{name:6s} {label:36s} {both[0]:9.2f} {both[2]:9.2f} {both[1]:10.2f} {both[3]:10.2f} '
                      f'{alone[0]:7.2f}')


if __name__ == '__main__':
    main()
