/*
 * mmio: reads and writes guest-physical MMIO registers from the guest's userspace, for tests
 * that play a hostile guest against Tidal's device registers.
 *
 *   mmio read ADDR WIDTH             prints the value (WIDTH 1, 2, 4 or 8 bytes)
 *   mmio write ADDR WIDTH VALUE
 *   mmio count ADDR COUNT            COUNT 4-byte writes to ADDR of 0, 1, 2, ...: each one new
 *   mmio storm ADDR LEN COUNT SEED   COUNT accesses at random offsets in [ADDR, ADDR+LEN),
 *                                    random widths, random values, reads and writes mixed
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
#include <sys/mman.h>
#include <unistd.h>

static volatile uint8_t *map_page(uint64_t addr, uint64_t len, uint64_t *offset)
{
	uint64_t page = addr & ~(uint64_t)0xfff;
	int fd = open("/dev/mem", O_RDWR);
	if (fd < 0) {
		perror("mmio: open /dev/mem");
		exit(1);
	}
	*offset = addr - page;
	void *p = mmap(NULL, *offset + len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)page);
	if (p == MAP_FAILED) {
		perror("mmio: mmap /dev/mem");
		exit(1);
	}
	return p;
}

static uint64_t poke(volatile uint8_t *p, int width, int write, uint64_t value)
{
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

int main(int argc, char **argv)
{
	uint64_t offset;
	if (argc == 4 && !strcmp(argv[1], "read")) {
		int w = width_arg(argv[3]);
		volatile uint8_t *p = map_page(strtoull(argv[2], NULL, 0), w, &offset);
		printf("0x%llx\n", (unsigned long long)poke(p + offset, w, 0, 0));
		return 0;
	}
	if (argc == 5 && !strcmp(argv[1], "write")) {
		int w = width_arg(argv[3]);
		volatile uint8_t *p = map_page(strtoull(argv[2], NULL, 0), w, &offset);
		poke(p + offset, w, 1, strtoull(argv[4], NULL, 0));
		return 0;
	}
	if (argc == 6 && !strcmp(argv[1], "storm")) {
		uint64_t len = strtoull(argv[3], NULL, 0);
		long count = atol(argv[4]);
		volatile uint8_t *p = map_page(strtoull(argv[2], NULL, 0), len + 8, &offset);
		srandom((unsigned)atol(argv[5]));
		for (long i = 0; i < count; i++) {
			static const int widths[] = { 1, 2, 4, 8 };
			int w = widths[random() % 4];
			uint64_t at = (uint64_t)random() % len;
			uint64_t value = ((uint64_t)random() << 32) ^ (uint64_t)random();
			/* Small values half the time: they hit real slots, commands and _OST codes. */
			if (random() % 2)
				value %= 64;
			poke(p + offset + at, w, (int)(random() % 2), value);
		}
		printf("mmio: %ld accesses\n", count);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "count")) {
		long count = atol(argv[3]);
		volatile uint8_t *p = map_page(strtoull(argv[2], NULL, 0), 4, &offset);
		for (long i = 0; i < count; i++)
			poke(p + offset, 4, 1, (uint64_t)i);
		printf("mmio: %ld writes\n", count);
		return 0;
	}
	fprintf(stderr, "usage: mmio read ADDR WIDTH | write ADDR WIDTH VALUE | storm ADDR LEN COUNT SEED"
		" | count ADDR COUNT\n");
	return 2;
}
