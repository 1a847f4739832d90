/* podnet: a pod's network namespace, emulated on the host's loopback (LD_PRELOAD).
 *
 * Every pod the test pod runner starts gets its own loopback address (PODNET_IP, e.g. 127.1.0.7).
 * A process of that pod sees the network the way it would inside its pod:
 *
 *  - bind() to the wildcard (0.0.0.0, ::) or to any loopback address binds PODNET_IP instead, so
 *    two pods may both listen on 6379 (two Ray heads) and never collide;
 *  - connect() to localhost (127.0.0.1, ::1, 0.0.0.0) reaches PODNET_IP: "localhost" is the pod;
 *  - a socket that connects to a loopback address without an explicit bind() first binds PODNET_IP,
 *    so its peers (and getsockname(), which Ray uses to learn its node IP) see the pod's address;
 *  - a UDP connect() to an address outside the host (Ray's node-IP detection "connects" to
 *    8.8.8.8:53 and reads getsockname()) is pointed at PODNET_IP: the pod's only interface;
 *  - getaddrinfo() answers cluster DNS names from the hosts file PODNET_HOSTS ("IP NAME" lines,
 *    rewritten by the runner as Services and pods change), with the search path of a pod in
 *    PODNET_NAMESPACE (<ns>.svc.cluster.local svc.cluster.local cluster.local) and ndots:5.
 *    Names under cluster.local that the file does not hold do not exist (EAI_NONAME); any other
 *    name goes to the system resolver.
 *  - PODNET_NODE_PORTS ("IP:PORT,...") lists the node's own endpoints a pod reaches as they are
 *    (the API server on 127.0.0.1: the `kubernetes` Service's backend, on the host network).
 *
 * Without PODNET_IP every call passes through unchanged.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

static int pod_state = 0; /* 0 unknown, 1 set, -1 unset */
static struct in_addr pod_ip;

static int have_pod_ip(void) {
    if (pod_state == 0) {
        const char *s = getenv("PODNET_IP");
        pod_state = (s && inet_pton(AF_INET, s, &pod_ip) == 1) ? 1 : -1;
    }
    return pod_state > 0;
}

static bind_fn real_bind(void) {
    static bind_fn fn = NULL;
    if (!fn) fn = (bind_fn)dlsym(RTLD_NEXT, "bind");
    return fn;
}

static connect_fn real_connect(void) {
    static connect_fn fn = NULL;
    if (!fn) fn = (connect_fn)dlsym(RTLD_NEXT, "connect");
    return fn;
}

static int loopback4(struct in_addr a) { return (ntohl(a.s_addr) >> 24) == 127; }
static int localhost4(struct in_addr a) {
    return a.s_addr == htonl(INADDR_ANY) || ntohl(a.s_addr) == INADDR_LOOPBACK;
}

static void mapped_pod6(struct in6_addr *a) {
    memset(a, 0, sizeof *a);
    a->s6_addr[10] = 0xff;
    a->s6_addr[11] = 0xff;
    memcpy(&a->s6_addr[12], &pod_ip, 4);
}

static int mapped4(const struct in6_addr *a, struct in_addr *out) {
    if (!IN6_IS_ADDR_V4MAPPED(a)) return 0;
    memcpy(out, &a->s6_addr[12], 4);
    return 1;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    if (!have_pod_ip() || !addr) return real_bind()(fd, addr, len);
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in in = *(const struct sockaddr_in *)addr;
        if (in.sin_addr.s_addr == htonl(INADDR_ANY) || loopback4(in.sin_addr)) {
            in.sin_addr = pod_ip;
            return real_bind()(fd, (struct sockaddr *)&in, sizeof in);
        }
    } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6 = *(const struct sockaddr_in6 *)addr;
        struct in_addr v4;
        int local = IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr) || IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr) ||
                    (mapped4(&in6.sin6_addr, &v4) && (v4.s_addr == 0 || loopback4(v4)));
        if (local) {
            /* A v4-mapped address needs a dual-stack socket. */
            int off = 0;
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
            mapped_pod6(&in6.sin6_addr);
            return real_bind()(fd, (struct sockaddr *)&in6, sizeof in6);
        }
    }
    return real_bind()(fd, addr, len);
}

/* Bind an unbound socket to the pod's address, so that it leaves from the pod. The port is left to
 * connect() (IP_BIND_ADDRESS_NO_PORT), as in a pod's own network namespace: a bind() to port 0
 * would reserve a port for good, and the kernel gives bind(0) the odd ports it keeps from connect()
 * (connect() takes even ones), so a pod's outgoing connections would hold odd ports such as Ray's
 * dashboard agent port 52365 and its agent, started later, could not listen there. */
static void bind_source(int fd, int family) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int one = 1;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        if (in->sin_port != 0 || in->sin_addr.s_addr != htonl(INADDR_ANY)) return;
        in->sin_addr = pod_ip;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        real_bind()(fd, (struct sockaddr *)in, sizeof *in);
    } else if (ss.ss_family == AF_INET6 && family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        if (in6->sin6_port != 0 || !IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) return;
        int off = 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        mapped_pod6(&in6->sin6_addr);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        real_bind()(fd, (struct sockaddr *)in6, sizeof *in6);
    }
}

/* Whether IP:PORT (network order) is one of the node's endpoints in PODNET_NODE_PORTS. */
static int node_endpoint(struct in_addr ip, in_port_t port) {
    const char *list = getenv("PODNET_NODE_PORTS");
    if (!list) return 0;
    char want[64];
    char text[INET_ADDRSTRLEN];
    if (!inet_ntop(AF_INET, &ip, text, sizeof text)) return 0;
    snprintf(want, sizeof want, "%s:%u", text, (unsigned)ntohs(port));
    size_t n = strlen(want);
    for (const char *p = list; (p = strstr(p, want)) != NULL; p += n) {
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return 1;
    }
    return 0;
}

static int is_udp(int fd) {
    int type = 0;
    socklen_t tl = sizeof type;
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_DGRAM;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    if (!have_pod_ip() || !addr) return real_connect()(fd, addr, len);
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in in = *(const struct sockaddr_in *)addr;
        if (node_endpoint(in.sin_addr, in.sin_port)) return real_connect()(fd, addr, len);
        if (localhost4(in.sin_addr)) in.sin_addr = pod_ip;
        else if (!loopback4(in.sin_addr) && is_udp(fd)) in.sin_addr = pod_ip;
        if (loopback4(in.sin_addr)) bind_source(fd, AF_INET);
        return real_connect()(fd, (struct sockaddr *)&in, sizeof in);
    }
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6 = *(const struct sockaddr_in6 *)addr;
        struct in_addr v4;
        int mapped = mapped4(&in6.sin6_addr, &v4);
        if (mapped && node_endpoint(v4, in6.sin6_port)) return real_connect()(fd, addr, len);
        if (IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr) || IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr) ||
            (mapped && localhost4(v4)) || (!mapped && is_udp(fd)) || (mapped && !loopback4(v4) && is_udp(fd))) {
            mapped_pod6(&in6.sin6_addr);
            mapped = 1;
        }
        if (mapped4(&in6.sin6_addr, &v4) && loopback4(v4)) bind_source(fd, AF_INET6);
        return real_connect()(fd, (struct sockaddr *)&in6, sizeof in6);
    }
    return real_connect()(fd, addr, len);
}

/* ---- cluster DNS --------------------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

#define MAX_IPS 16

/* The IPs of `name` in the hosts file, into `ips` (MAX_IPS x 64); how many were found. */
static int lookup_file(const char *name, char ips[][64]) {
    const char *path = getenv("PODNET_HOSTS");
    if (!path) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[512];
    int found = 0;
    while (found < MAX_IPS && fgets(line, sizeof line, f)) {
        char addr[64], host[400];
        if (sscanf(line, "%63s %399s", addr, host) == 2 && strcasecmp(host, name) == 0) {
            strcpy(ips[found++], addr);
        }
    }
    fclose(f);
    return found;
}

/* Resolve like a pod's resolv.conf (search path, ndots:5): how many IPs, 0 when not a cluster name,
 * -1 for a cluster name that does not exist (NXDOMAIN). */
static int cluster_lookup(const char *node, char ips[][64]) {
    char name[300];
    int n;
    size_t len = strlen(node);
    if (len == 0 || len >= 200) return 0;
    strcpy(name, node);
    if (name[len - 1] == '.') {
        name[len - 1] = '\0';
        if ((n = lookup_file(name, ips)) > 0) return n;
        return ends_with(name, ".cluster.local") ? -1 : 0;
    }
    int dots = 0;
    for (const char *p = name; *p; p++) dots += *p == '.';
    const char *ns = getenv("PODNET_NAMESPACE");
    if (dots < 5) {
        char candidate[400];
        if (ns) {
            snprintf(candidate, sizeof candidate, "%s.%s.svc.cluster.local", name, ns);
            if ((n = lookup_file(candidate, ips)) > 0) return n;
        }
        snprintf(candidate, sizeof candidate, "%s.svc.cluster.local", name);
        if ((n = lookup_file(candidate, ips)) > 0) return n;
        snprintf(candidate, sizeof candidate, "%s.cluster.local", name);
        if ((n = lookup_file(candidate, ips)) > 0) return n;
    }
    if ((n = lookup_file(name, ips)) > 0) return n;
    return ends_with(name, ".cluster.local") || ends_with(name, ".svc") ? -1 : 0;
}

static int numeric(gai_fn real, const char *ip, const char *service, const struct addrinfo *hints,
                   struct addrinfo **res) {
    struct addrinfo h;
    if (hints) h = *hints;
    else memset(&h, 0, sizeof h);
    h.ai_flags |= AI_NUMERICHOST;
    h.ai_flags &= ~AI_CANONNAME;
    /* The answers are IPv4: an AF_INET6-only query gets them v4-mapped. */
    if (h.ai_family == AF_INET6) {
        char mapped[80];
        snprintf(mapped, sizeof mapped, "::ffff:%.63s", ip);
        return real(mapped, service, &h, res);
    }
    return real(ip, service, &h, res);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    static gai_fn real = NULL;
    if (!real) real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (node && getenv("PODNET_HOSTS")) {
        struct in_addr probe;
        if (inet_pton(AF_INET, node, &probe) != 1) {
            char ips[MAX_IPS][64];
            int found = cluster_lookup(node, ips);
            if (found < 0) return EAI_NONAME;
            if (found > 0) {
                /* One numeric lookup per address, chained: freeaddrinfo frees node by node. */
                struct addrinfo *head = NULL, *tail = NULL;
                int rc = 0;
                for (int i = 0; i < found; i++) {
                    struct addrinfo *part = NULL;
                    rc = numeric(real, ips[i], service, hints, &part);
                    if (rc != 0) continue;
                    if (!head) head = part;
                    else tail->ai_next = part;
                    for (tail = part; tail->ai_next; tail = tail->ai_next) {
                    }
                }
                if (!head) return rc ? rc : EAI_NONAME;
                *res = head;
                return 0;
            }
        }
    }
    return real(node, service, hints, res);
}
