/* spqr.c - command-line front end: dispatches subcommands. */
#include <malloc.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: spqr <command> [options]\n"
            "commands:\n"
            "  eval MODEL --data FILE [--seqlen S] [--json]        perplexity\n"
            "  generate MODEL [--prompt TEXT] [-n N] [--temp T] [--seed S] [--tokenizer FILE]\n"
            "  quantize MODEL --method rtn|gptq|spqr|cluscomp [options] -o OUT [--json]\n"
            "  inspect FILE [--verify] [--json]                    describe a .spqr file\n"
            "  zeroshot MODEL [--tasks LIST] [--limit N] [--json]  zero-shot accuracy (lm-eval scoring)\n"
            "  version                                             version and build features\n"
            "MODEL: a Hugging Face folder, a llama2.c .bin (with --tokenizer) or a .spqr file.\n"
            "Run 'spqr <command> --help' for the options of a command.\n");
}

int main(int argc, char **argv) {
    /* The forward pass allocates and frees large activation buffers per block;
     * keep them in the heap instead of fresh (zero-filled) mmaps every call. */
    mallopt(M_MMAP_THRESHOLD, 512 << 20);
    mallopt(M_TRIM_THRESHOLD, 1024 << 20);
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("spqr %s\nfeatures: %s blas_core=%s\n", SPQR_VERSION_STRING, spqr_build_features(), spqr_blas_core());
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "quantize")) return cmd_quantize(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "zeroshot")) return cmd_zeroshot(argc - 1, argv + 1);
    fprintf(stderr, "spqr: unknown command '%s'\n", cmd);
    usage(stderr);
    return CLI_EXIT_USAGE;
}
