package docker

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ferry-io/ferry/internal/size"
)

// DefaultSize is a new volume's size when -o size is not given.
const DefaultSize = 10 << 30

// Options are what `docker volume create -d ferry -o KEY=VALUE` sets.
type Options struct {
	// Size in bytes; SizeSet says -o size was given.
	Size    int64
	SizeSet bool
	// Store makes an S3-backed volume in that gateway store.
	Store string
	// FSType is the file system made on an empty volume: ext4 or xfs.
	FSType string
	// ReadOnly mounts the file system read-only.
	ReadOnly bool
	// From, VOLUME@SNAPSHOT, makes the volume a clone of that gateway
	// snapshot (size and store are the snapshot's).
	From string
}

var optionHelp = "size (e.g. 10G), store (an S3 store on the gateway), fstype (ext4 or xfs), readonly (true or false), from (VOLUME@SNAPSHOT: a clone)"

// ParseOptions checks Docker's -o options; unknown keys and bad values are
// errors that say what is accepted.
func ParseOptions(opts map[string]string) (Options, error) {
	o := Options{Size: DefaultSize, FSType: "ext4"}
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := opts[k]
		switch strings.ToLower(k) {
		case "size":
			n, err := size.Parse(v)
			if err != nil {
				return o, fmt.Errorf("option size=%q: %v", v, err)
			}
			if n <= 0 {
				return o, fmt.Errorf("option size=%q: must be larger than 0", v)
			}
			if n < 16<<20 {
				return o, fmt.Errorf("option size=%q: at least 16M, for a file system to fit", v)
			}
			o.Size, o.SizeSet = n, true
		case "store":
			if v == "" {
				return o, fmt.Errorf("option store is empty: name an S3 store the gateway has (ferry store ls)")
			}
			o.Store = v
		case "fstype":
			switch v {
			case "ext4", "xfs":
				o.FSType = v
			default:
				return o, fmt.Errorf("option fstype=%q: use ext4 or xfs", v)
			}
		case "from":
			vol, snap, ok := strings.Cut(v, "@")
			if !ok || vol == "" || snap == "" {
				return o, fmt.Errorf("option from=%q: give a gateway snapshot as VOLUME@SNAPSHOT (ferry volume snapshot ls VOLUME)", v)
			}
			o.From = v
		case "readonly":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, fmt.Errorf("option readonly=%q: use true or false", v)
			}
			o.ReadOnly = b
		default:
			return o, fmt.Errorf("unknown option %q: the ferry driver takes %s", k, optionHelp)
		}
	}
	if o.From != "" && (o.SizeSet || o.Store != "") {
		return o, fmt.Errorf("option from= takes the snapshot's size and store: leave out size and store")
	}
	if o.FSType == "xfs" && o.Size < 300<<20 {
		return o, fmt.Errorf("option fstype=xfs needs size of at least 300M (mkfs.xfs refuses smaller)")
	}
	return o, nil
}
