package main

import "github.com/urfave/cli/v2"

func cmdVolume() *cli.Command {
	return &cli.Command{
		Name:    "volume",
		Aliases: []string{"vol"},
		Usage:   "create, list, inspect, attach, resize and remove volumes",
		Subcommands: []*cli.Command{
			cmdVolumeCreate(),
			cmdVolumeLs(),
			cmdVolumeInfo(),
			cmdVolumeURL(),
			cmdVolumeResize(),
			cmdVolumeUpdate(),
			cmdVolumeRm(),
			cmdVolumeDetach(),
			cmdVolumeCheckpoint(),
			cmdVolumeExport(),
			cmdVolumeRelease(),
			cmdVolumeAdopt(),
			cmdVolumeMigrate(),
			cmdVolumeSnapshot(),
			cmdVolumeClone(),
		},
	}
}
