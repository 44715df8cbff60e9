/* mpi_allreduce: the yardstick a user would pick instead of gnc: MPI_Allreduce (sum) of
 * N floats over np ranks. Prints the median time of `reps` allreduces after two
 * warm-up rounds, on rank 0, as "allreduce_ms=...".
 *   mpi_allreduce MFLOATS REPS   (MFLOATS in Mi floats) */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int Compare(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const long n = (argc > 1 ? atol(argv[1]) : 4) << 20;
  const int reps = argc > 2 ? atoi(argv[2]) : 10;
  float* send = malloc(n * sizeof(float));
  float* recv = malloc(n * sizeof(float));
  double* times = malloc(reps * sizeof(double));
  for (long i = 0; i < n; ++i) send[i] = 1e-3f * (float)(i % 97);
  for (int r = -2; r < reps; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    MPI_Allreduce(send, recv, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    const double t1 = MPI_Wtime();
    if (r >= 0) times[r] = t1 - t0;
  }
  /* Every rank waits for the slowest: the round is the maximum over ranks. */
  double* worst = malloc(reps * sizeof(double));
  MPI_Reduce(times, worst, reps, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    qsort(worst, reps, sizeof(double), Compare);
    printf("allreduce_ms=%.2f\n", 1e3 * worst[reps / 2]);
  }
  free(send);
  free(recv);
  free(times);
  free(worst);
  MPI_Finalize();
  return 0;
}
