package main

// Child processes: every component is this same executable started with the component's name as
// first argument, in a process group of its own (Setpgid) and with SIGKILL as parent-death signal
// (Pdeathsig), so that nothing outlives the launcher even when the launcher is SIGKILLed.
//
// Pdeathsig fires when the *thread* that forked the child exits, not the process. The Go runtime
// only ends threads that a goroutine left locked, but to be certain `up` locks its goroutine to
// its thread for its whole life (runtime.LockOSThread in up) and starts every child from it.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has been reaped
	err     error         // cmd.Wait's result, valid after done
	stopped bool          // we asked it to stop (its exit is not a failure)
}

// startProc starts `self component args...` with its stdout and stderr appended to
// DIR/<component>.log.
func startProc(self, dir, component string, args []string) (*proc, error) {
	logPath := filepath.Join(dir, component+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	fmt.Fprintf(logFile, "==== %s: %s %s\n", time.Now().Format(time.RFC3339), component, strings.Join(args, " "))
	cmd := exec.Command(self, append([]string{component}, args...)...)
	cmd.Dir = dir
	cmd.Stdin = nil
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", component, err)
	}
	p := &proc{name: component, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) exitDescription() string {
	if p.err == nil {
		return "exited with status 0"
	}
	return p.err.Error()
}

// stop sends SIGTERM to the process group, then SIGKILL after grace; it returns once the process
// is reaped. A last SIGKILL to the group removes any stray descendant.
func (p *proc) stop(grace time.Duration) {
	p.stopped = true
	pgid := p.cmd.Process.Pid // Setpgid: the group id is the child's pid
	if !p.exited() {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			logf("%s did not stop within %s: SIGKILL", p.name, grace)
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL) // ESRCH when the group is already empty
}

// stopAll stops the processes in reverse start order.
func stopAll(procs []*proc, grace time.Duration) {
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if p == nil {
			continue
		}
		start := time.Now()
		wasRunning := !p.exited()
		p.stop(grace)
		if wasRunning {
			logf("%s stopped (%s)", p.name, secs(time.Since(start)))
		}
	}
}

// freePort asks the kernel for a free loopback port (listen on port 0, read it, close). The port
// could in principle be taken before the component binds it: `up` retries a component whose log
// says "address already in use" with new ports.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail returns the last n lines of a file.
func tail(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{fmt.Sprintf("(cannot read %s: %v)", path, err)}
	}
	defer f.Close()
	// Component logs during start-up are small; read at most the last 1 MiB.
	if st, err := f.Stat(); err == nil && st.Size() > 1<<20 {
		_, _ = f.Seek(-(1 << 20), io.SeekEnd)
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return lines
}

func printTail(p *proc, n int) {
	fmt.Fprintf(os.Stderr, "----- last %d lines of %s -----\n", n, p.logPath)
	for _, l := range tail(p.logPath, n) {
		fmt.Fprintln(os.Stderr, l)
	}
	fmt.Fprintf(os.Stderr, "----- end of %s -----\n", p.logPath)
}

// portConflict tells whether the log's recent lines show a bind failure.
func portConflict(p *proc) bool {
	for _, l := range tail(p.logPath, 60) {
		if strings.Contains(l, "address already in use") {
			return true
		}
	}
	return false
}

var errInterrupted = errors.New("interrupted by a signal")
