// Native harness for the Verilated GsaccelCore: host bytes on stdin, reply bytes on stdout.
//
// The RTL is clocked for real; this file only moves bytes. It feeds i_stream from stdin as
// fast as the core takes them (o_stream is always ready), writes reply bytes out when a
// reply is complete (or a buffer fills), and blocks on stdin only when the core is idle
// (busy low, nothing to send, no input pending), so an idle simulation costs no CPU. It
// exits at end of input once the core is idle, printing the cycle count and the simulation
// speed (cycles per second of running, not waiting, time) to stderr.
//
// Options:
//   --trace FILE     dump waves (only in a build made with --trace-fst or --trace)
//   --max-cycles N   stop after N cycles (a runaway guard; 0 = none, the default)
// SIGUSR1 prints the statistics line to stderr at once.

#include <verilated.h>
#include "Vcore.h"
#if VM_TRACE_FST
#include <verilated_fst_c.h>
#elif VM_TRACE
#include <verilated_vcd_c.h>
#endif

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include <poll.h>
#include <unistd.h>

// Amaranth joins signature paths with "__"; Verilator escapes a double underscore.
#define I_VALID   i_stream___05Fvalid
#define I_READY   i_stream___05Fready
#define I_PAYLOAD i_stream___05Fpayload
#define O_VALID   o_stream___05Fvalid
#define O_READY   o_stream___05Fready
#define O_PAYLOAD o_stream___05Fpayload

namespace {

// Cycles between non-blocking looks at stdin while the core is working: a syscall per
// cycle would cost more than the model itself.
constexpr uint64_t POLL_INTERVAL = 4096;
// Cycles the core must stay quiet before the harness believes it idle (the control path
// takes a cycle or two to raise busy after the last byte of a frame).
constexpr int QUIET_CYCLES = 8;
constexpr size_t CHUNK = 65536;

volatile std::sig_atomic_t stats_requested = 0;

void on_sigusr1(int) { stats_requested = 1; }

struct Stats {
    uint64_t cycles = 0, bytes_in = 0, bytes_out = 0;
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    double blocked = 0;   // seconds spent waiting for input: not simulation time

    void print(const char *what) const {
        double seconds = std::chrono::duration<double>(
            std::chrono::steady_clock::now() - start).count() - blocked;
        // CPU time too: on a shared machine wall time says more about the load than the model.
        double cpu_seconds = double(std::clock()) / CLOCKS_PER_SEC;
        std::fprintf(stderr,
                     "gsaccel-sim: %s cycles=%llu bytes_in=%llu bytes_out=%llu seconds=%.3f "
                     "cycles_per_second=%.0f cpu_seconds=%.3f\n",
                     what, (unsigned long long)cycles, (unsigned long long)bytes_in,
                     (unsigned long long)bytes_out, seconds,
                     seconds > 0 ? cycles / seconds : 0.0, cpu_seconds);
        std::fflush(stderr);
    }
};

// Replace ``buffer`` by what stdin has (possibly nothing, unless blocking: then wait for at
// least one byte). Returns false at EOF.
bool read_input(std::vector<uint8_t> &buffer, bool blocking) {
    buffer.clear();
    if (!blocking) {
        struct pollfd pfd = {STDIN_FILENO, POLLIN, 0};
        int ready;
        do {
            ready = poll(&pfd, 1, 0);
        } while (ready < 0 && errno == EINTR);
        if (ready <= 0)
            return true;
    }
    buffer.resize(CHUNK);
    ssize_t n;
    do {
        n = read(STDIN_FILENO, buffer.data(), CHUNK);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        buffer.clear();
        return false;
    }
    buffer.resize(n);
    return true;
}

bool write_all(const std::vector<uint8_t> &data) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = write(STDOUT_FILENO, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        done += n;
    }
    return true;
}

}  // namespace

int main(int argc, char **argv) {
    std::string trace_path;
    uint64_t max_cycles = 0;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        if (arg == "--trace" && i + 1 < argc) {
            trace_path = argv[++i];
        } else if (arg == "--max-cycles" && i + 1 < argc) {
            max_cycles = std::strtoull(argv[++i], nullptr, 0);
        } else if (arg.rfind("+verilator", 0) == 0) {
            // Verilator runtime options pass through.
        } else {
            std::fprintf(stderr, "gsaccel-sim: unknown argument %s\n", arg.c_str());
            return 2;
        }
    }
    std::signal(SIGUSR1, on_sigusr1);
    std::signal(SIGPIPE, SIG_IGN);

    auto context = std::make_unique<VerilatedContext>();
    context->commandArgs(argc, argv);
    auto top = std::make_unique<Vcore>(context.get());

#if VM_TRACE
    context->traceEverOn(true);
#if VM_TRACE_FST
    auto tracer = std::make_unique<VerilatedFstC>();
#else
    auto tracer = std::make_unique<VerilatedVcdC>();
#endif
    bool tracing = !trace_path.empty();
    if (tracing) {
        top->trace(tracer.get(), 99);
        tracer->open(trace_path.c_str());
    }
#else
    if (!trace_path.empty()) {
        std::fprintf(stderr, "gsaccel-sim: --trace needs a build with tracing\n");
        return 2;
    }
#endif

    Stats stats;
    uint64_t time = 0;
    auto step = [&](int clk) {
        top->clk = clk;
        top->eval();
#if VM_TRACE
        if (tracing)
            tracer->dump(time);
#endif
        time += 5;
    };

    // Synchronous reset for a few cycles.
    top->rst = 1;
    top->I_VALID = 0;
    top->O_READY = 1;
    for (int i = 0; i < 4; i++) {
        step(0);
        step(1);
    }
    top->rst = 0;

    std::vector<uint8_t> input, output;
    size_t input_pos = 0;
    bool eof = false;
    int quiet = QUIET_CYCLES;
    uint64_t last_poll = 0;
    int status = 0;

    while (true) {
        if (input_pos == input.size()) {
            bool idle = quiet >= QUIET_CYCLES;
            if (idle && !output.empty()) {
                if (!write_all(output)) {
                    status = 1;   // the reader went away
                    break;
                }
                output.clear();
            }
            if (idle && eof)
                break;
            if (!eof && (idle || stats.cycles - last_poll >= POLL_INTERVAL)) {
                input_pos = 0;
                auto before = std::chrono::steady_clock::now();
                eof = !read_input(input, idle);
                if (idle)
                    stats.blocked += std::chrono::duration<double>(
                        std::chrono::steady_clock::now() - before).count();
                last_poll = stats.cycles;
            }
        }
        if (stats_requested) {
            stats_requested = 0;
            stats.print("running");
        }

        bool offer = input_pos < input.size();
        top->I_VALID = offer;
        if (offer)
            top->I_PAYLOAD = input[input_pos];
        step(0);
        bool taken = offer && top->I_READY;
        bool sent = top->O_VALID;
        uint8_t byte = top->O_PAYLOAD;
        bool busy = top->busy;
        step(1);
        stats.cycles++;

        if (taken) {
            input_pos++;
            stats.bytes_in++;
        }
        if (sent) {
            output.push_back(byte);
            stats.bytes_out++;
        }
        quiet = (busy || taken || sent) ? 0 : (quiet < QUIET_CYCLES ? quiet + 1 : quiet);
        if (output.size() >= CHUNK || (!output.empty() && !busy && !sent)) {
            if (!write_all(output)) {
                status = 1;
                break;
            }
            output.clear();
        }
        if (max_cycles && stats.cycles >= max_cycles) {
            std::fprintf(stderr, "gsaccel-sim: stopped after --max-cycles %llu\n",
                         (unsigned long long)max_cycles);
            status = 3;
            break;
        }
    }
    if (!output.empty())
        write_all(output);

#if VM_TRACE
    if (tracing)
        tracer->close();
#endif
    top->final();
    stats.print("exit");
    return status;
}
