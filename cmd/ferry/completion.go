package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func cmdCompletion() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		UsageText: "ferry completion bash|zsh|fish",
		Description: `Completes commands, subcommands and flags. Load it in the current shell,
or add the line to your shell's start-up file:

   source <(ferry completion bash)              # ~/.bashrc
   source <(ferry completion zsh)               # ~/.zshrc, after compinit
   ferry completion fish | source               # ~/.config/fish/config.fish`,
		BashComplete: func(c *cli.Context) {
			if c.NArg() == 0 {
				fmt.Println("bash\nzsh\nfish")
			}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("name one shell: bash, zsh or fish (usage: %s)", c.Command.UsageText)
			}
			var script string
			switch shell := c.Args().First(); shell {
			case "bash":
				script = bashCompletion
			case "zsh":
				script = zshCompletion
			case "fish":
				s, err := c.App.ToFishCompletion()
				if err != nil {
					return fmt.Errorf("fish completion: %w", err)
				}
				script = s
			default:
				return fmt.Errorf("no completion for shell %q: use bash, zsh or fish", shell)
			}
			_, err := fmt.Fprint(os.Stdout, script)
			return err
		},
	}
}

// bashCompletion asks ferry itself for the candidates: it runs the words
// before the cursor (and the current word when it is a flag) followed by
// the completion flag. With the bash-completion package loaded, words are
// rejoined across "=" and ":" (--api=127.0.0.1:9809 stays one word).
const bashCompletion = `# bash completion for ferry: source <(ferry completion bash)
_ferry_complete() {
  local cur cword words
  if declare -F _get_comp_words_by_ref >/dev/null 2>&1; then
    _get_comp_words_by_ref -n "=:" cur words cword
  else
    cur="${COMP_WORDS[COMP_CWORD]}" words=("${COMP_WORDS[@]}") cword=$COMP_CWORD
  fi
  local -a req=("${words[@]:0:cword}")
  req[0]="${req[0]/#\~/$HOME}"
  if [[ "$cur" == -* ]]; then
    req+=("$cur")
  fi
  local opts
  opts=$("${req[@]}" ` + completionFlag + ` 2>/dev/null) || opts=""
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o bashdefault -o default -F _ferry_complete ferry
`

// zshCompletion is the same for zsh.
const zshCompletion = `#compdef ferry
# zsh completion for ferry: source <(ferry completion zsh), after compinit
_ferry() {
  local -a req opts
  req=("${(@)words[1,CURRENT-1]}")
  req[1]="${req[1]/#\~/$HOME}"
  if [[ "${words[CURRENT]}" == -* ]]; then
    req+=("${words[CURRENT]}")
  fi
  opts=("${(@f)$("${req[@]}" ` + completionFlag + ` 2>/dev/null)}")
  if [[ -n "${opts[1]}" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
if [[ "${funcstack[1]}" == "_ferry" ]]; then
  _ferry "$@"
else
  compdef _ferry ferry
fi
`
