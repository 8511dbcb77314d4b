/* cli.h - shared pieces of the spqr command-line tool. */
#ifndef SPQR_CLI_H
#define SPQR_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "spqr.h"

/* Exit codes: 0 ok, 1 failure, 2 usage error. */
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

/* Print "spqr: error: <spqr_last_error()>" and return CLI_EXIT_FAIL. */
int cli_fail(spqr_status st);
/* Print "spqr <cmd>: <msg>" plus a usage hint and return CLI_EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...);

/* Option parsing: returns true and the value for "--name VALUE" / "--name=VALUE". */
typedef struct cli_args {
    int argc;
    char **argv;
    int i;
} cli_args;
bool cli_parse_int(const char *s, long lo, long hi, long *out);
bool cli_parse_double(const char *s, double *out);

/* Is stderr a terminal (progress display)? */
bool cli_tty(void);
/* Install the library log callback (stderr), verbose = also INFO. */
void cli_install_log(bool verbose);
/* One progress line on a terminal ("\r" rewriting), nothing otherwise. */
void cli_progress(const char *fmt, ...);
void cli_progress_done(void);

/* Monotonic clock in seconds. */
double cli_now(void);
/* Print "spqr: error: <message>" and return CLI_EXIT_FAIL. */
int cli_error(const char *fmt, ...);
/* A whole file, NUL-terminated (malloc'd), or NULL (errno tells why). */
char *cli_read_file(const char *path, size_t *len);

/* Default model: $SPQR_SHARED/models/ref-40m (or ../shared/...). Static. */
const char *cli_default_model(void);

int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_zeroshot(int argc, char **argv);

#endif
