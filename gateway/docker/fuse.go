package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"

	"github.com/ferry-io/ferry/gateway/api/client"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/docker/internal/nbdclient"
	"github.com/ferry-io/ferry/internal/bootid"
)

// DiskFile is the name of the one file a volume's FUSE file system holds.
const DiskFile = "disk"

// FUSEConfig configures ServeFUSE.
type FUSEConfig struct {
	// NBDURL is the volume's export, nbd://HOST:PORT/NAME.
	NBDURL string
	// Dir is the (existing, empty) directory to mount on.
	Dir string
	// ReadOnly refuses writes.
	ReadOnly bool
	// Ready receives one line once the file is served; may be nil.
	Ready io.WriteCloser
	// Lease, when set, is renewed at the gateway for as long as the file
	// is served, so that a volume stays held while its data path lives,
	// whether or not the plugin does.
	Lease *Lease
	// PprofAddr, when set, serves Go profiles (net/http/pprof) on this
	// address (host:port; port 0 picks one, which is logged), to profile
	// the data path under load.
	PprofAddr string
	// NBD tunes the NBD client (connections, replay limit); its zero
	// value takes nbdclient's defaults.
	NBD nbdclient.Config
	// AlwaysReplay keeps a copy of acknowledged, unflushed writes for
	// replay even where the gateway holds them in this host's kernel
	// (see replayNeeded).
	AlwaysReplay bool
	Logger       *slog.Logger
}

// servePprof serves net/http/pprof on addr until ctx ends.
func servePprof(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("pprof listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); srv.Close() }()
	go srv.Serve(ln)
	log.Info("serving Go profiles", "addr", ln.Addr().String())
	return nil
}

// Lease names a gateway attachment to renew.
type Lease struct {
	Gateway  *client.Client
	Volume   string
	Host     string
	Protocol string
	ReadOnly bool
}

// renew renews the lease every wire.AttachRenew until ctx ends.
func (l *Lease) renew(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(wire.AttachRenew)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, wire.AttachRenew)
		_, err := l.Gateway.Attach(rctx, l.Volume, l.Host, wire.AttachRequest{Protocol: l.Protocol, ReadOnly: l.ReadOnly, Reclaim: true})
		cancel()
		if errors.Is(err, wire.ErrBusy) {
			log.Error("another host holds this volume's attachment while this host serves it", "volume", l.Volume, "err", err)
		} else if err != nil && ctx.Err() == nil {
			log.Warn("renew attachment", "volume", l.Volume, "err", err)
		}
	}
}

// replayNeeded reports whether the FUSE path must keep its own copy of
// the writes the gateway acknowledged but has not flushed, to replay them
// should the gateway lose them. The gateway says which kernel holds a
// volume's acknowledged writes (wire.Volume.WritesHeldBy: a local volume's
// writes are in the page cache when acknowledged). When that kernel is
// this host's, whatever loses them — a power cut, a kernel crash — ends
// this process and the file system above it too, as a power cut does,
// and a gateway killed or restarted loses none: the copy would protect
// nothing. Otherwise (another host's gateway, an S3-backed volume, a
// gateway that cannot be asked) the copy is kept.
func replayNeeded(ctx context.Context, l *Lease, log *slog.Logger) bool {
	in, err := l.Gateway.Volume(ctx, l.Volume)
	switch {
	case err != nil:
		log.Warn("cannot ask the gateway who holds acknowledged writes; keeping a copy for replay", "volume", l.Volume, "err", err)
		return true
	case in.WritesHeldBy == "" || in.WritesHeldBy != bootid.Get():
		log.Info("keeping acknowledged writes for replay until flushed", "volume", l.Volume, "held_by", in.WritesHeldBy)
		return true
	}
	log.Info("no replay copy: the gateway holds acknowledged writes in this host's kernel", "volume", l.Volume)
	return false
}

// ServeFUSE presents the export as Dir/disk until ctx ends, then unmounts.
// It is what `ferry docker-plugin fuse-serve` runs: a process of its own
// per attached volume, so that the data path outlives a plugin crash.
func ServeFUSE(ctx context.Context, cfg FUSEConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	ncfg := cfg.NBD
	ncfg.Logger = log
	switch {
	case cfg.AlwaysReplay:
		log.Info("keeping acknowledged writes for replay until flushed (always)")
	case cfg.Lease == nil:
		log.Info("keeping acknowledged writes for replay until flushed (no gateway to ask who holds them)")
	default:
		ncfg.NoReplay = !replayNeeded(dctx, cfg.Lease, log)
	}
	nc, err := nbdclient.Dial(dctx, cfg.NBDURL, ncfg)
	cancel()
	if err != nil {
		return fmt.Errorf("connect to %s: %w", cfg.NBDURL, err)
	}
	defer nc.Close()
	if cfg.PprofAddr != "" {
		pctx, stop := context.WithCancel(ctx)
		defer stop()
		if err := servePprof(pctx, cfg.PprofAddr, log); err != nil {
			return err
		}
	}
	// A FUSE mount left by a dead server of ours answers ENOTCONN; clear it.
	if _, err := os.Stat(cfg.Dir); errors.Is(err, syscall.ENOTCONN) {
		syscall.Unmount(cfg.Dir, syscall.MNT_DETACH)
	}
	file := &diskNode{c: nc, ro: cfg.ReadOnly, log: log}
	srv, err := mountDisk(cfg.Dir, file, "ferry:"+cfg.NBDURL, log)
	if err != nil {
		return err
	}
	log.Info("serving volume file", "file", filepath.Join(cfg.Dir, DiskFile), "nbd", cfg.NBDURL, "size", nc.Size())
	if limit := splice.MaxPipeSize(); limit < maxFUSERead+pipeSlack {
		log.Info("reads of 1 MiB are copied, not spliced: fs.pipe-max-size is too small (appliance/sysctl.d/60-ferry-docker-plugin.conf sets 2 MiB)", "fs.pipe-max-size", limit)
	}
	if cfg.Ready != nil {
		fmt.Fprintln(cfg.Ready, "ready")
		cfg.Ready.Close()
	}
	served := make(chan struct{})
	go func() { srv.Wait(); close(served) }()
	if cfg.Lease != nil {
		lctx, stop := context.WithCancel(ctx)
		defer stop()
		go cfg.Lease.renew(lctx, log)
	}
	select {
	case <-ctx.Done():
	case <-served:
		return errors.New("FUSE mount went away")
	}
	// The plugin detached the loop device first; a busy mount means
	// someone still holds the file, so detach lazily rather than hang.
	if err := srv.Unmount(); err != nil {
		log.Warn("unmount FUSE; detaching lazily", "dir", cfg.Dir, "err", err)
		syscall.Unmount(cfg.Dir, syscall.MNT_DETACH)
	}
	<-served
	if err := nc.Flush(context.Background()); err != nil {
		return fmt.Errorf("final flush: %w", err)
	}
	return nil
}

// maxFUSERead is the largest read or write the kernel sends the FUSE
// file system.
const maxFUSERead = 1 << 20

// mountDisk mounts a file system holding file as DiskFile on dir.
// go-fuse's messages (failures it recovers from) go to log as warnings.
func mountDisk(dir string, file *diskNode, fsName string, log *slog.Logger) (*fuse.Server, error) {
	srv, err := fs.Mount(dir, &diskRoot{file: file}, &fs.Options{
		MountOptions: fuse.MountOptions{
			Logger:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
			FsName:            fsName,
			Name:              "ferry",
			DirectMount:       true,
			MaxWrite:          maxFUSERead,
			MaxBackground:     64,
			DisableXAttrs:     true,
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("mount FUSE on %s: %w", dir, err)
	}
	return srv, nil
}

// diskRoot is the FUSE root directory: one file, DiskFile.
type diskRoot struct {
	fs.Inode
	file *diskNode
}

var _ fs.NodeOnAdder = (*diskRoot)(nil)

func (r *diskRoot) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, r.file, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild(DiskFile, ch, false)
}

// diskNode is the volume as a file: reads, writes, fsync and fallocate go
// to the gateway over NBD.
type diskNode struct {
	fs.Inode
	c   *nbdclient.Client
	ro  bool
	log *slog.Logger

	piped      atomic.Int64 // reads sent through a pipe (readPiped)
	pipeCopied atomic.Int64 // of them, read back out of the pipe (go-fuse did not splice)
	pipedBytes atomic.Int64 // bytes in pipes now (maxPipedBytes)
}

var (
	_ fs.NodeOpener    = (*diskNode)(nil)
	_ fs.NodeReader    = (*diskNode)(nil)
	_ fs.NodeWriter    = (*diskNode)(nil)
	_ fs.NodeFsyncer   = (*diskNode)(nil)
	_ fs.NodeFlusher   = (*diskNode)(nil)
	_ fs.NodeGetattrer = (*diskNode)(nil)
	_ fs.NodeSetattrer = (*diskNode)(nil)
	_ fs.NodeAllocater = (*diskNode)(nil)
)

func (n *diskNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.ro && flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	// No page cache in FUSE: every read and write reaches the gateway,
	// and an fsync finds nothing hidden above it.
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *diskNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = 0o600
	if n.ro {
		out.Mode = 0o400
	}
	out.Size = uint64(n.c.Size())
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	out.Nlink = 1
	return 0
}

func (n *diskNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != n.c.Size() {
		return syscall.EPERM // the size is the gateway's to change
	}
	return n.Getattr(ctx, f, out)
}

func (n *diskNode) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := n.c.Size()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	if off+int64(len(dest)) > size {
		dest = dest[:size-off]
	}
	if len(dest) >= pipedRead && len(dest)+pipeSlack <= splice.MaxPipeSize() && splice.Resizable() {
		if res, ok, errno := n.readPiped(ctx, dest, off); ok {
			return res, errno
		}
	}
	if err := n.c.ReadAt(context.WithoutCancel(ctx), dest, off); err != nil {
		return nil, n.errno("read", off, len(dest), err)
	}
	return bufferResult(dest), 0
}

// bufferResult is a read's reply from its buffer. go-fuse writes a result
// that lists its slices with writev(2); any other result not from a file
// or a pipe it first tries to splice (a pipe taken, the header written
// into it, the attempt given up and the pipe emptied: three system calls
// or more, for nothing), and it logs a failure for each one larger than a
// pipe may be (1 MiB reads where fs.pipe-max-size is 1 MiB).
func bufferResult(b []byte) fuse.ReadResult { return fuse.ReadResultVector([][]byte{b}) }

// pipedRead is the smallest read whose data goes from the socket to
// /dev/fuse through a pipe (readPiped); smaller ones are copied, a pipe
// costing more system calls than their copy does.
const pipedRead = 128 << 10

// pipeSlack is the room go-fuse's own pipe needs beyond a read's data:
// the reply's header, and a page it keeps free. go-fuse sends through a
// pipe only up to the system's fs.pipe-max-size, so with its default of
// 1 MiB, reads of 1 MiB are copied (docs/DOCKER.md, "Attach methods").
const pipeSlack = 16 + 4096

// maxPipedBytes bounds the bytes of reads held in pipes at once (and so
// the pipes go-fuse keeps in its pool). The kernel charges pipes to their
// user, and a user past fs.pipe-user-pages-soft gets one-page pipes in
// every program; the helper normally holds CAP_SYS_ADMIN (it mounts),
// which exempts it, but need not (a FUSE mount in a user namespace).
const maxPipedBytes = 16 << 20

// readPiped reads into a pipe that go-fuse splices into /dev/fuse: the
// socket's pages go into the pipe by reference and are copied once, into
// the reader's pages, where reading into dest and writing that out copies
// twice. ok is false when no pipe could be had (nothing was read).
func (n *diskNode) readPiped(ctx context.Context, dest []byte, off int64) (res fuse.ReadResult, ok bool, errno syscall.Errno) {
	size := int64(len(dest))
	if n.pipedBytes.Add(size) > maxPipedBytes {
		n.pipedBytes.Add(-size)
		return nil, false, 0
	}
	var r *pipeResult // the budget is r's to give back (Done) once set
	defer func() {
		if r == nil {
			n.pipedBytes.Add(-size)
		}
	}()
	pair, err := splice.Get()
	if err != nil {
		return nil, false, 0
	}
	if err := pair.Grow(len(dest)); err != nil {
		splice.Drop(pair)
		return nil, false, 0
	}
	inPipe, err := n.c.ReadToPipe(context.WithoutCancel(ctx), int(pair.WriteFd()), int(pair.ReadFd()), dest, off)
	switch {
	case err != nil:
		splice.Drop(pair) // it may hold part of the data
		return nil, true, n.errno("read", off, len(dest), err)
	case !inPipe:
		splice.Done(pair)
		return bufferResult(dest), true, 0
	}
	n.piped.Add(1)
	r = &pipeResult{pair: pair, size: len(dest), node: n}
	return r, true, 0
}

// pipeResult is a read's reply waiting in a pipe. go-fuse splices a result
// that has Stateful (as its own ReadResultPipe has) into /dev/fuse after
// the reply's header, reads it with Bytes should that fail, and calls
// Done once the reply is sent, which gives the pipe and its share of
// maxPipedBytes back.
type pipeResult struct {
	pair *splice.Pair
	size int
	node *diskNode
}

func (r *pipeResult) Size() int { return r.size }

func (r *pipeResult) Stateful() (fd uintptr, size int) { return r.pair.ReadFd(), r.size }

func (r *pipeResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	r.node.pipeCopied.Add(1)
	n, err := r.pair.Read(buf[:min(len(buf), r.size)])
	if err != nil {
		return nil, fuse.ToStatus(err)
	}
	return buf[:n], fuse.OK
}

func (r *pipeResult) Done() {
	splice.Done(r.pair)
	r.node.pipedBytes.Add(-int64(r.size))
}

func (n *diskNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if n.ro {
		return 0, syscall.EROFS
	}
	if off+int64(len(data)) > n.c.Size() {
		return 0, syscall.EFBIG
	}
	if err := n.c.WriteAt(context.WithoutCancel(ctx), data, off); err != nil {
		return 0, n.errno("write", off, len(data), err)
	}
	return uint32(len(data)), 0
}

// Fsync is the durability point: the loop device turns a flush from the
// file system in the container into an fsync of this file, and this into
// NBD FLUSH.
func (n *diskNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if err := n.c.Flush(context.WithoutCancel(ctx)); err != nil {
		return n.errno("flush", 0, 0, err)
	}
	return 0
}

// Flush (close of a descriptor) needs nothing: writes are on the gateway.
func (n *diskNode) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// Allocate maps the fallocate calls a loop device makes for discard and
// write-zeroes onto NBD WRITE_ZEROES (which may trim on the gateway and
// guarantees zeroes, as punching a hole must).
func (n *diskNode) Allocate(ctx context.Context, f fs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	if n.ro {
		return syscall.EROFS
	}
	if int64(off+size) > n.c.Size() {
		if mode&fallocKeepSize == 0 {
			return syscall.EFBIG
		}
		size = uint64(max(n.c.Size()-int64(off), 0))
	}
	switch {
	case mode&(fallocPunchHole|fallocZeroRange) != 0:
		if err := n.c.WriteZeroes(context.WithoutCancel(ctx), int64(off), int64(size)); err != nil {
			return n.errno("write zeroes", int64(off), int(size), err)
		}
		return 0
	case mode&^fallocKeepSize == 0:
		return 0 // allocating is the gateway's business; nothing to do
	}
	return syscall.EOPNOTSUPP
}

func (n *diskNode) errno(op string, off int64, length int, err error) syscall.Errno {
	n.log.Error("volume I/O failed", "op", op, "off", off, "len", length, "err", err)
	var e nbdclient.Errno
	if errors.As(err, &e) && e != 0 {
		return syscall.Errno(e)
	}
	return syscall.EIO
}
