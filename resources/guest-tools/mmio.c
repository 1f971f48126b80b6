/*
 * mmio: reads and writes device registers from the guest's userspace, guest-physical MMIO or
 * I/O ports, for tests that play a hostile guest against Tidal's device registers and for the
 * benchmark, which times them.
 *
 *   mmio read ADDR WIDTH             prints the value (WIDTH 1, 2, 4 or 8 bytes)
 *   mmio write ADDR WIDTH VALUE
 *   mmio storm ADDR LEN COUNT SEED   COUNT accesses at random offsets in [ADDR, ADDR+LEN),
 *                                    random widths, random values, reads and writes mixed
 *   mmio time ADDR COUNT             COUNT 4-byte reads of ADDR; prints the time each took
 *                                    (each is one exit to the VMM and back)
 *
 * ADDR is a guest-physical address, or `io:PORT` for an I/O port. Ports take 1, 2 and 4-byte
 * accesses (in/out); an 8-byte access to a port is two 4-byte ones, low half first.
 *
 * busybox's devmem cannot do this: it maps /dev/mem with O_SYNC (uncached), and the kernel
 * refuses that mapping because its ACPI code already maps Tidal's register pages write-back
 * ("x86/PAT: ... expected mapping type uncached-minus ... got write-back"). Without O_SYNC the
 * mapping agrees with the kernel's; the accesses still reach the VMM, since no RAM backs them.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Where accesses go: `len` bytes of MMIO mapped at `mapped`, or of ports from `port`. */
struct target {
	int is_port;
	uint64_t addr;
	volatile uint8_t *mapped;
};

static struct target open_target(const char *arg, uint64_t len)
{
	struct target t = { 0 };
	if (!strncmp(arg, "io:", 3)) {
		t.is_port = 1;
		t.addr = strtoull(arg + 3, NULL, 0);
		if (t.addr + len > 0x10000) {
			fprintf(stderr, "mmio: ports end at 0xffff, not past %s + %llu\n", arg,
				(unsigned long long)len);
			exit(2);
		}
		/* iopl, not ioperm: ioperm covers only the first 1024 ports. */
		if (iopl(3) != 0) {
			perror("mmio: iopl");
			exit(1);
		}
		return t;
	}
	t.addr = strtoull(arg, NULL, 0);
	uint64_t page = t.addr & ~(uint64_t)0xfff;
	int fd = open("/dev/mem", O_RDWR);
	if (fd < 0) {
		perror("mmio: open /dev/mem");
		exit(1);
	}
	void *p = mmap(NULL, t.addr - page + len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)page);
	if (p == MAP_FAILED) {
		perror("mmio: mmap /dev/mem");
		exit(1);
	}
	t.mapped = (volatile uint8_t *)p + (t.addr - page);
	return t;
}

static uint64_t port_access(uint16_t port, int width, int write, uint64_t value)
{
	switch (width) {
	case 1: if (write) outb((uint8_t)value, port); else value = inb(port); break;
	case 2: if (write) outw((uint16_t)value, port); else value = inw(port); break;
	case 4: if (write) outl((uint32_t)value, port); else value = inl(port); break;
	default:
		value = port_access(port, 4, write, value) |
			port_access((uint16_t)(port + 4), 4, write, value >> 32) << 32;
		break;
	}
	return value;
}

/* One access of `width` bytes at `offset` into the target; returns what a read read. */
static uint64_t poke(struct target t, uint64_t offset, int width, int write, uint64_t value)
{
	if (t.is_port)
		return port_access((uint16_t)(t.addr + offset), width, write, value);
	volatile uint8_t *p = t.mapped + offset;
	switch (width) {
	case 1: if (write) *(volatile uint8_t *)p = value; else value = *(volatile uint8_t *)p; break;
	case 2: if (write) *(volatile uint16_t *)p = value; else value = *(volatile uint16_t *)p; break;
	case 4: if (write) *(volatile uint32_t *)p = value; else value = *(volatile uint32_t *)p; break;
	default: if (write) *(volatile uint64_t *)p = value; else value = *(volatile uint64_t *)p; break;
	}
	return value;
}

static int width_arg(const char *s)
{
	int w = atoi(s);
	if (w != 1 && w != 2 && w != 4 && w != 8) {
		fprintf(stderr, "mmio: width must be 1, 2, 4 or 8, not %s\n", s);
		exit(2);
	}
	return w;
}

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "read")) {
		int w = width_arg(argv[3]);
		struct target t = open_target(argv[2], (uint64_t)w);
		printf("0x%llx\n", (unsigned long long)poke(t, 0, w, 0, 0));
		return 0;
	}
	if (argc == 5 && !strcmp(argv[1], "write")) {
		int w = width_arg(argv[3]);
		struct target t = open_target(argv[2], (uint64_t)w);
		poke(t, 0, w, 1, strtoull(argv[4], NULL, 0));
		return 0;
	}
	if (argc == 6 && !strcmp(argv[1], "storm")) {
		uint64_t len = strtoull(argv[3], NULL, 0);
		long count = atol(argv[4]);
		struct target t = open_target(argv[2], len + 8);
		srandom((unsigned)atol(argv[5]));
		for (long i = 0; i < count; i++) {
			static const int widths[] = { 1, 2, 4, 8 };
			int w = widths[random() % 4];
			uint64_t at = (uint64_t)random() % len;
			uint64_t value = ((uint64_t)random() << 32) ^ (uint64_t)random();
			/* Small values half the time: they hit real slots, commands and _OST codes. */
			if (random() % 2)
				value %= 64;
			poke(t, at, w, (int)(random() % 2), value);
		}
		printf("mmio: %ld accesses\n", count);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "time")) {
		long count = atol(argv[3]);
		if (count <= 0) {
			fprintf(stderr, "mmio: COUNT must be positive\n");
			return 2;
		}
		struct target t = open_target(argv[2], 4);
		double start = now_ns();
		for (long i = 0; i < count; i++)
			poke(t, 0, 4, 0, 0);
		printf("mmio: %s: %ld reads, %.0f ns each\n", argv[2], count,
		       (now_ns() - start) / (double)count);
		return 0;
	}
	fprintf(stderr, "usage: mmio read ADDR WIDTH | write ADDR WIDTH VALUE | "
			"storm ADDR LEN COUNT SEED | time ADDR COUNT   (ADDR: physical, or io:PORT)\n");
	return 2;
}
