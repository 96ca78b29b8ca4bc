/*
 * The executables at the top of the ecs-ipam bundle (ecs-ipam, ecs-ipamctl).
 *
 * Static, because the ECS agent's container has no dynamic loader: a dynamic
 * executable names /lib64/ld-linux-*.so.* (PT_INTERP), which is not there, and
 * the kernel answers "no such file or directory".  This launcher finds the
 * bundle's private directory beside its own real path (symlinks resolved, so a
 * symlinked plugin directory works too), then replaces itself with the bundled
 * loader running the bundled interpreter: nothing is unpacked, nothing compiled.
 *
 * tools/build_bundle.py compiles it with these macros:
 *   BUNDLE_DIR  the private directory's name        ("ecs-ipam.d")
 *   LOADER      the dynamic loader's file name      ("ld-linux-x86-64.so.2")
 *   ENTRY       the Python statement that runs the command
 *   CNI_ERRORS  1 for the plugin: a failure is also a CNI error object on stdout
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

/* Prints text as the inside of a JSON string: a path may hold quotes, backslashes
 * and control characters. */
static void print_json_text(const char *text)
{
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if (*c < 0x20)
            printf("\\u%04x", *c);
        else
            putchar(*c);
    }
}

static int fail(const char *what, const char *path, int error)
{
    fprintf(stderr, "ecs-ipam bundle: %s %s: %s\n", what, path, strerror(error));
    if (CNI_ERRORS) {
        /* 199, the plugin's internal error: the bundle is broken (100 is "address in use"). */
        printf("{\"code\":199,\"msg\":\"ecs-ipam bundle: ");
        print_json_text(what);
        putchar(' ');
        print_json_text(path);
        printf(": ");
        print_json_text(strerror(error));
        printf("\"}\n");
    }
    return 127;
}

/* The directory that holds this executable, symlinks resolved. */
static int own_directory(char *out, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", out, size - 1);
    if (n > 0) {
        out[n] = '\0';
    } else {
        /* No /proc mounted: the path the kernel was given, resolved here. */
        const char *given = (const char *)getauxval(AT_EXECFN);
        if (given == NULL || realpath(given, out) == NULL)
            return -1;
    }
    char *slash = strrchr(out, '/');
    if (slash == NULL)
        return -1;
    *slash = '\0';
    return 0;
}

int main(int argc, char **argv)
{
    char here[PATH_MAX], loader[PATH_MAX], libraries[PATH_MAX], python[PATH_MAX];
    if (own_directory(here, sizeof here) != 0)
        return fail("cannot find", "its own path", errno ? errno : ENOENT);
    if (snprintf(libraries, sizeof libraries, "%s/%s/lib", here, BUNDLE_DIR) >= (int)sizeof libraries
        || snprintf(loader, sizeof loader, "%s/%s", libraries, LOADER) >= (int)sizeof loader
        || snprintf(python, sizeof python, "%s/%s/bin/python3", here, BUNDLE_DIR) >= (int)sizeof python)
        return fail("path too long:", here, ENAMETOOLONG);

    /* -I -S: no environment variables, no user or site directories, no site module:
     * the interpreter's path is the bundle's own library directory and nothing else.
     * --inhibit-cache: the host's /etc/ld.so.cache never chooses a library. */
    char *head[] = {loader, "--inhibit-cache", "--library-path", libraries, python, "-I", "-S", "-c", ENTRY};
    size_t count = sizeof head / sizeof head[0];
    char **args = calloc(count + (size_t)argc, sizeof *args);
    if (args == NULL)
        return fail("cannot start", python, ENOMEM);
    memcpy(args, head, sizeof head);
    for (int i = 1; i < argc; i++)
        args[count + (size_t)i - 1] = argv[i];
    execv(loader, args);
    return fail("cannot run", loader, errno);
}
