/* Forced into every C file of the CPython build (-include): glibc 2.29 gave exp, exp2,
 * log, log2 and pow new default symbol versions. Built against the build root's glibc
 * 2.31, a caller would need GLIBC_2.29; bound to the older versions, which glibc keeps
 * forever, it runs on glibc 2.28 (and older). packaging/inspect_binary.py --max-glibc
 * checks every bundled ELF file afterwards. */
#if defined(__x86_64__)
#define RT_GLIBC_BASE "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define RT_GLIBC_BASE "GLIBC_2.17"
#endif
#ifdef RT_GLIBC_BASE
__asm__(".symver exp,exp@" RT_GLIBC_BASE);
__asm__(".symver exp2,exp2@" RT_GLIBC_BASE);
__asm__(".symver log,log@" RT_GLIBC_BASE);
__asm__(".symver log2,log2@" RT_GLIBC_BASE);
__asm__(".symver pow,pow@" RT_GLIBC_BASE);
#endif
