// The function view's C++ workload (built by the tests with g++, frame pointers
// on): spins in a namespaced function, so that its mangled name must be demangled.
#include <chrono>
#include <cstdlib>

namespace workload_cpp {
struct Spinner {
    __attribute__((noinline)) static unsigned long spin(unsigned long n) {
        volatile unsigned long x = 1;
        for (unsigned long i = 0; i < n; i++) x = x * 6364136223846793005UL + i;
        return x;
    }
};
}  // namespace workload_cpp

int main(int argc, char** argv) {
    double secs = argc > 1 ? std::atof(argv[1]) : 2.0;
    auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(secs);
    unsigned long sum = 0;
    while (std::chrono::steady_clock::now() < until) sum += workload_cpp::Spinner::spin(100000);
    return sum == 42 ? 1 : 0;
}
